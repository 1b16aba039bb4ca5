//! The chat template a GGUF model carries in its metadata (`tokenizer.chat_template`, Jinja),
//! rendered the way Hugging Face and llama.cpp render it: `messages` and `add_generation_prompt`.
//! A file of a family whose turn format is fixed but that carries no template (Gemma 3 files
//! converted without one) gets its family's template ([`GEMMA_TEMPLATE`]).

use minijinja::{Environment, context};

use crate::llm::GgufModel;
use crate::{Error, Result};

/// Largest template accepted; real ones are a few kilobytes.
const TEMPLATE_BYTES_MAX: usize = 64 * 1024;

/// Gemma's turn format, as Google's Gemma 3 template writes it (a system message opens the first
/// user turn; roles alternate, the assistant's being `model`), without the leading `<bos>`, which
/// the tokenizer adds.
pub(crate) const GEMMA_TEMPLATE: &str = "\
{%- if messages and messages[0].role == 'system' -%}\
{%- set first = messages[0].content ~ '\n\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set first = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for m in turns -%}\
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}\
{{ raise_exception('Gemma conversations alternate user and assistant turns, starting with the user') }}\
{%- endif -%}\
{{ '<start_of_turn>' ~ ('model' if m.role == 'assistant' else m.role) ~ '\\n' }}\
{{- first if loop.first else '' }}{{ m.content | trim }}{{ '<end_of_turn>\\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

/// A model's chat template, compiled.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// The template in `model`'s metadata, or its family's when it has none and the family's turn
    /// format is fixed (`gemma3`); `None` for a model with neither.
    pub fn from_model(model: &GgufModel) -> Result<Option<Self>> {
        match model
            .metadata("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
        {
            Some(source) => Self::new(source.clone()).map(Some),
            None if model.config.arch == "gemma3" => Self::new(GEMMA_TEMPLATE.into()).map(Some),
            None => Ok(None),
        }
    }

    /// Compile `source`.
    pub fn new(source: String) -> Result<Self> {
        if source.len() > TEMPLATE_BYTES_MAX {
            return Err(Error::Tokenizer(format!(
                "chat template of {} bytes (at most {TEMPLATE_BYTES_MAX})",
                source.len()
            )));
        }
        let mut env = Environment::new();
        // Templates call raise_exception() to reject a conversation they cannot render.
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
        Ok(Self { env })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        template
            .render(context! { messages => minijinja::Value::from(minijinja::value::Serde(messages)), add_generation_prompt => add_generation_prompt })
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template_and_its_exceptions() {
        let source = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\
            <|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(source.into()).expect("compiles");
        let user = ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        };
        assert_eq!(
            t.render(std::slice::from_ref(&user), true)
                .expect("renders"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&[user], false).expect("renders"),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
        let tool = ChatMessage {
            role: "tool".into(),
            content: "x".into(),
        };
        assert!(
            t.render(&[tool], true)
                .expect_err("refused")
                .to_string()
                .contains("no tools")
        );
        assert!(ChatTemplate::new("{% for %}".into()).is_err());
    }

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn gemma_turns_are_written_as_googles_template_writes_them() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE.into()).expect("compiles");
        // What Google's Gemma 3 template renders (after its <bos>) for these conversations.
        assert_eq!(
            t.render(&[message("user", "hi")], true).expect("renders"),
            "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            t.render(
                &[
                    message("system", "Be brief."),
                    message("user", " Why? "),
                    message("assistant", "Because."),
                    message("user", "Ok"),
                ],
                false
            )
            .expect("renders"),
            "<start_of_turn>user\nBe brief.\n\nWhy?<end_of_turn>\n\
             <start_of_turn>model\nBecause.<end_of_turn>\n\
             <start_of_turn>user\nOk<end_of_turn>\n"
        );
        let refused = t
            .render(&[message("assistant", "first")], true)
            .expect_err("a conversation must start with the user");
        assert!(refused.to_string().contains("alternate"), "{refused}");
    }
}
