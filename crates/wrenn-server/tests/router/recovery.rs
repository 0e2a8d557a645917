//! Start-up recovery: every status a capsule can be stored in, against whether the runtime
//! still had it (adopted) or not (lost), and leftovers it removed.

use chrono::Utc;
use wrenn_runtime::{CapsuleHandle, RecoveryReport};
use wrenn_server::service::fake::Op;
use wrenn_server::store::{CapsuleRow, Store};
use wrenn_types::api::{Capsule, CapsuleStatus};

use super::{Harness, ROOMY};

fn record(status: CapsuleStatus) -> Capsule {
    let now = Utc::now();
    Capsule {
        id: wrenn_server::ids::new_capsule_id(),
        status,
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 512,
        timeout_sec: 0,
        disk_size_mb: 0,
        disk_used_mb: None,
        created_at: now,
        started_at: Some(now),
        last_active_at: Some(now),
        last_updated: now,
        metadata: None,
        error: None,
    }
}

#[tokio::test]
async fn every_stored_status_against_what_the_runtime_kept() {
    use CapsuleStatus::*;
    // (stored status, still alive in the runtime, status after recovery)
    let matrix = [
        (Running, true, Running),
        (Paused, true, Paused),
        (Pausing, true, Paused),
        (Resuming, true, Running),
        (Snapshotting, true, Running),
        (Missing, true, Running),
        (Starting, true, Error),
        (Stopping, true, Stopped),
        (Running, false, Error),
        (Paused, false, Error),
        (Starting, false, Error),
        (Stopping, false, Stopped),
    ];
    let store = Store::open_in_memory().expect("store");
    let team_id = store
        .create_key("team", "before-restart")
        .await
        .expect("key")
        .row
        .team_id;
    let mut report = RecoveryReport {
        removed: vec!["cl-leftover0000000000000000000".into()],
        ..RecoveryReport::default()
    };
    let mut cases = Vec::new();
    for (stored, alive, after) in matrix {
        let capsule = record(stored);
        if alive {
            report.adopted.push(CapsuleHandle {
                id: capsule.id.clone(),
                agent: std::path::Path::new("/nonexistent").into(),
                ip: None,
                init_pid: 1,
                guest: None,
            });
        }
        cases.push((capsule.id.clone(), stored, alive, after));
        let row = CapsuleRow {
            team_id: team_id.clone(),
            capsule,
        };
        store.put_capsule(row).await.expect("put");
    }

    let h = Harness::over(store, ROOMY).await;
    assert_eq!(h.team_id, team_id);
    h.rt.recover_with(report);
    h.state.capsules.recover().await.expect("recover");

    for (id, stored, alive, after) in &cases {
        let c = h.wait_status(id, after.as_str()).await;
        let case = format!("{stored} (alive: {alive}) → {after}: {c}");
        match (alive, after) {
            (false, Error) => {
                assert_eq!(
                    c["error"], "capsule lost while the server was down",
                    "{case}"
                )
            }
            (true, Error) => assert_eq!(
                c["error"], "server restarted while the capsule was starting",
                "{case}"
            ),
            _ => assert!(c["error"].is_null(), "{case}"),
        }
        // Only capsules that ended live are still listed.
        let listed = h.state.capsules.list(&team_id).iter().any(|l| &l.id == id);
        assert_eq!(listed, !after.is_terminal(), "{case}");
    }

    let ids = |s: CapsuleStatus| -> Vec<String> {
        cases
            .iter()
            .filter(|(_, stored, alive, _)| *stored == s && *alive)
            .map(|(id, ..)| id.clone())
            .collect()
    };
    let mut thawed = h.rt.calls(Op::Resume);
    thawed.sort();
    let mut want: Vec<String> = [ids(Resuming), ids(Snapshotting), ids(Missing)].concat();
    want.sort();
    assert_eq!(
        thawed, want,
        "resumes: the interrupted resume and the frozen snapshots"
    );
    assert_eq!(
        h.rt.calls(Op::Pause),
        ids(Pausing),
        "the interrupted pause finished"
    );
    let mut destroyed = h.rt.calls(Op::Destroy);
    destroyed.sort();
    let mut want: Vec<String> = [ids(Starting), ids(Stopping)].concat();
    want.sort();
    assert_eq!(destroyed, want);
    assert_eq!(h.rt.paused(&ids(Pausing)[0]), Some(true));
}
