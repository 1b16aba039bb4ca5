//! `hearth coop init|invite|revoke`: a co-op's key, its members' certificates and revocations.
//!
//! The co-op key is an ed25519 key kept like a node's identity (`DIR/identity.key`, mode 0600); its
//! public half is written to `DIR/coop.pub` to hand to members. Certificates and revocations are
//! text files: `#` comment lines saying what they are, then one line of hex (the postcard encoding).
//! Revocations are also kept in `DIR/revoked/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hearth_protocol::PeerId;
use hearth_protocol::coop::{Membership, Revocation};
use serde_json::json;

use crate::cli::{CoopArgs, CoopCommand};

/// The file holding the co-op's public key, as a peer id.
pub(crate) const COOP_PUBLIC_FILE: &str = "coop.pub";
const REVOKED_DIR: &str = "revoked";
const MS_PER_DAY: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Write `value` as a commented hex file.
fn write_armored(
    path: &Path,
    comments: &[String],
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let text = hearth_protocol::coop::armor(comments, value);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Read a commented hex file.
pub(crate) fn read_armored<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    hearth_protocol::coop::unarmor(&text)
        .with_context(|| format!("{}: not a Hearth co-op file", path.display()))
}

fn peer(text: &str) -> anyhow::Result<PeerId> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("{text:?} is not a peer id: {e}"))
}

fn coop_key(dir: &Path) -> anyhow::Result<hearth_protocol::SecretKey> {
    if !dir.join(hearth_net::IDENTITY_FILE).exists() {
        bail!(
            "{}: no co-op key here (run `hearth coop init --dir {}` first)",
            dir.display(),
            dir.display()
        );
    }
    Ok(hearth_net::load_or_create_identity(dir)?.0)
}

pub(crate) async fn run(args: CoopArgs, file: &crate::config::FileConfig) -> anyhow::Result<()> {
    match args.command {
        CoopCommand::Init { dir, json } => {
            let (key, created) = hearth_net::load_or_create_identity(&dir)?;
            let id = key.public().peer_id();
            std::fs::write(dir.join(COOP_PUBLIC_FILE), format!("{id}\n"))?;
            if json {
                println!("{}", json!({ "coop": id, "created": created, "dir": dir }));
            } else {
                println!("{id}");
                eprintln!(
                    "{} co-op key in {} (keep it safe: it admits members); its public id is in {}",
                    if created {
                        "made the"
                    } else {
                        "kept the existing"
                    },
                    dir.join(hearth_net::IDENTITY_FILE).display(),
                    dir.join(COOP_PUBLIC_FILE).display()
                );
            }
        }
        CoopCommand::Invite {
            peer_id,
            dir,
            expires,
            expires_secs,
            out,
            json,
        } => {
            let (member, key) = (peer(&peer_id)?, coop_key(&dir)?);
            let now = now_ms();
            let expires_ms = expires
                .map(|days| now + u64::from(days) * MS_PER_DAY)
                .or(expires_secs.map(|s| now + s * 1000));
            let cert = Membership::issue(&key, member, now, expires_ms);
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.cert", member.short())));
            write_armored(
                &out,
                &[
                    "Hearth co-op membership certificate".into(),
                    format!("co-op  {}", key.public().peer_id()),
                    format!("member {member}"),
                    match expires_ms {
                        Some(at) => format!("expires at {at} ms since the epoch"),
                        None => "never expires".into(),
                    },
                ],
                &cert,
            )?;
            if json {
                println!(
                    "{}",
                    json!({ "member": member, "coop": key.public().peer_id(), "expires_ms": expires_ms, "out": out })
                );
            } else {
                println!("{}", out.display());
            }
        }
        CoopCommand::Show { cert, dir, json } => {
            let membership: Membership = read_armored(&cert)?;
            let b = &membership.body;
            let coop = match &dir {
                Some(dir) => coop_key(dir)?.public(),
                None => b.coop,
            };
            let revoked = |peer: &PeerId| {
                dir.as_ref().is_some_and(|d| {
                    d.join(REVOKED_DIR)
                        .join(format!("{peer}.revocation"))
                        .exists()
                        && read_armored::<Revocation>(
                            &d.join(REVOKED_DIR).join(format!("{peer}.revocation")),
                        )
                        .is_ok_and(|r| r.verify(&coop).is_ok() && r.body.member == *peer)
                })
            };
            let verdict = membership.admits(&coop, &b.member, now_ms(), revoked);
            let value = json!({
                "member": b.member,
                "coop": b.coop.peer_id(),
                "issued_ms": b.issued_ms,
                "expires_ms": b.expires_ms,
                "valid": verdict.is_ok(),
                "problem": verdict.as_ref().err().map(ToString::to_string),
            });
            if json {
                println!("{value}");
            } else {
                println!(
                    "member  {}
co-op   {}
expires {}
{}",
                    b.member,
                    b.coop.peer_id(),
                    b.expires_ms.map_or("never".into(), |e| format!("{e} ms")),
                    match &verdict {
                        Ok(()) => "valid".to_string(),
                        Err(e) => format!("NOT valid: {e}"),
                    }
                );
            }
            if verdict.is_err() {
                std::process::exit(1);
            }
        }
        CoopCommand::Revoke {
            peer_id,
            dir,
            client,
            json,
        } => {
            let (member, key) = (peer(&peer_id)?, coop_key(&dir)?);
            let revocation = Revocation::issue(&key, member, now_ms());
            let path = dir.join(REVOKED_DIR).join(format!("{member}.revocation"));
            write_armored(
                &path,
                &[
                    "Hearth co-op revocation".into(),
                    format!("co-op  {}", key.public().peer_id()),
                    format!("member {member}"),
                ],
                &revocation,
            )?;
            let handed = if !client.api.is_empty() || file.api.is_some() {
                let client = crate::client::Client::new(&client, file)?;
                let _: serde_json::Value = client
                    .post(
                        "/v1/coop/revocations",
                        &json!({ "revocation": hearth_protocol::coop::armor(&[], &revocation).trim() }),
                    )
                    .await?;
                true
            } else {
                false
            };
            if json {
                println!(
                    "{}",
                    json!({ "member": member, "revocation": path, "coordinator": handed })
                );
            } else {
                println!("{}", path.display());
                if handed {
                    eprintln!("the coordinator refuses {member} from now on and tells the members");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armored_files_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = hearth_protocol::SecretKey::from_bytes(&[7; 32]);
        let cert = Membership::issue(&key, key.public().peer_id(), 1, None);
        let path = dir.path().join("a.cert");
        write_armored(&path, &["comment".into()], &cert).expect("write");
        assert_eq!(read_armored::<Membership>(&path).expect("read"), cert);
        std::fs::write(&path, "# nothing\nzz\n").expect("write");
        assert!(read_armored::<Membership>(&path).is_err());
    }
}
