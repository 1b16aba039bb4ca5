//! `hearth apikey create|list|revoke`: the coordinator's API keys, managed over its HTTP API with the
//! admin key, so only the running coordinator ever touches its key store.

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{ApiKeyArgs, ApiKeyCommand, ClientArgs};
use crate::client::Client;
use crate::config::{FileConfig, default_data_dir};

/// The admin key: the flag or HEARTH_ADMIN_KEY, else DATA_DIR/admin.key.
fn admin_key(args: &ApiKeyArgs) -> anyhow::Result<String> {
    if let Some(key) = &args.admin_key {
        return Ok(key.clone());
    }
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir("coordinator")?,
    };
    let path = dir.join(hearth_coordinator::keys::ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the admin key from {} (pass --admin-key, or --data-dir of the coordinator)",
            path.display()
        )
    })?;
    Ok(key.trim().to_string())
}

pub(crate) async fn run(args: ApiKeyArgs, file: &FileConfig) -> anyhow::Result<()> {
    let client = Client::new(
        &ClientArgs {
            api: args.api.clone(),
            api_key: Some(admin_key(&args)?),
            ca_cert: args.ca_cert.clone(),
        },
        file,
    )?;
    match &args.command {
        ApiKeyCommand::Create {
            member,
            name,
            requests_per_minute,
            tokens_per_day,
            units_per_day,
        } => {
            let body = json!({
                "member": member,
                "name": name,
                "requests_per_minute": requests_per_minute,
                "tokens_per_day": tokens_per_day,
                "units_per_day": units_per_day,
            });
            let key: Value = client.post("/v1/admin/keys", &body).await?;
            if args.json {
                println!("{key}");
            } else {
                println!("{}", key["key"].as_str().unwrap_or_default());
                eprintln!(
                    "key id {} (shown once; `hearth apikey revoke {}` revokes it)",
                    key["id"].as_str().unwrap_or_default(),
                    key["id"].as_str().unwrap_or_default()
                );
            }
        }
        ApiKeyCommand::List => {
            let keys: Vec<Value> = client.get("/v1/admin/keys").await?;
            if args.json {
                println!("{}", Value::from(keys));
            } else {
                println!("{:<18} {:<8} {:<54} NAME", "ID", "STATE", "MEMBER");
                for k in &keys {
                    println!(
                        "{:<18} {:<8} {:<54} {}",
                        k["id"].as_str().unwrap_or_default(),
                        if k["revoked"] == true {
                            "revoked"
                        } else {
                            "live"
                        },
                        k["member"].as_str().unwrap_or("-"),
                        k["name"].as_str().unwrap_or("")
                    );
                }
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let key: Value = client
                .post(&format!("/v1/admin/keys/{id}/revoke"), &json!({}))
                .await?;
            if args.json {
                println!("{key}");
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
}
