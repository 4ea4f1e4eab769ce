//! `nanoclaw sessions …`: operator commands on the central store that do not need the service
//! (until the admin CLI `ncl` exists). They open `data/nanoclaw.db` like any SQLite client (WAL
//! lets them run beside a running service); a running service picks a released session up at its
//! next periodic resume (within a minute) or at the session's next message.

use nanoclaw_actors::store::{self, Release, Store};
use std::path::Path;

/// Lists sessions that are not closed, one per line: id, status, agent group, chat, reason.
/// Returns the process exit code.
pub async fn list(data_dir: &Path) -> i32 {
    let Some(store) = open(data_dir).await else { return 1 };
    match store.call(|c| store::session_overview(c)).await {
        Ok(rows) => {
            println!("{:<28} {:<12} {:<16} {:<24} reason", "session", "status", "agent group", "chat");
            for r in rows {
                println!(
                    "{:<28} {:<12} {:<16} {:<24} {}",
                    r.id,
                    r.status,
                    r.agent_group,
                    r.chat.unwrap_or_else(|| "-".into()),
                    r.reason.unwrap_or_default()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("nanoclaw: sessions: {e}");
            1
        }
    }
}

/// Releases a quarantined or paused session (after its files were fixed or reset). Exit code 0
/// when released, 1 when there is no such session or it is not held.
pub async fn release(data_dir: &Path, session_id: &str) -> i32 {
    let Some(store) = open(data_dir).await else { return 1 };
    let id = session_id.to_string();
    match store.call(move |c| store::release_session(c, &id)).await {
        Ok(Release::Released(hold)) => {
            println!("released {session_id} (was {}: {})", hold.status(), hold.reason());
            0
        }
        Ok(Release::NotHeld(status)) => {
            eprintln!("nanoclaw: session {session_id} is {status}, not quarantined or paused");
            1
        }
        Ok(Release::NotFound) => {
            eprintln!("nanoclaw: no session {session_id}");
            1
        }
        Err(e) => {
            eprintln!("nanoclaw: release {session_id}: {e}");
            1
        }
    }
}

async fn open(data_dir: &Path) -> Option<Store> {
    let db = data_dir.join("nanoclaw.db");
    if !db.exists() {
        eprintln!(
            "nanoclaw: {}: no such database (no service ever ran with this data directory)",
            db.display()
        );
        return None;
    }
    match Store::open(&db).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("nanoclaw: {e}");
            None
        }
    }
}
