//! `hearth keygen`.

use hearth_net::{IDENTITY_FILE, load_or_create_identity};
use serde_json::json;

use crate::cli::KeygenArgs;
use crate::config::{FileConfig, default_data_dir, pick};

pub(crate) fn run(args: KeygenArgs, file: &FileConfig) -> anyhow::Result<()> {
    let data_dir = pick(args.data_dir, file.node.data_dir.clone(), || {
        default_data_dir("node")
    })?;
    let (key, created) = load_or_create_identity(&data_dir)?;
    let peer_id = key.public().peer_id();
    let path = data_dir.join(IDENTITY_FILE);
    if args.json {
        println!(
            "{}",
            json!({ "peer_id": peer_id, "created": created, "path": path })
        );
    } else {
        println!("{peer_id}");
        if !created {
            eprintln!("(existing identity kept: {})", path.display());
        }
    }
    Ok(())
}
