//! The chat template a GGUF model carries in its metadata (`tokenizer.chat_template`, Jinja),
//! rendered the way Hugging Face and llama.cpp render it: `messages` and `add_generation_prompt`.

use minijinja::{Environment, context};

use crate::llm::GgufModel;
use crate::{Error, Result};

/// Largest template accepted; real ones are a few kilobytes.
const TEMPLATE_BYTES_MAX: usize = 64 * 1024;

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
    /// The template in `model`'s metadata, if it has one.
    pub fn from_model(model: &GgufModel) -> Result<Option<Self>> {
        let Some(source) = model
            .metadata("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
        else {
            return Ok(None);
        };
        Self::new(source.clone()).map(Some)
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
}
