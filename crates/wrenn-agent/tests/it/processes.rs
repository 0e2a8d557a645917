//! Background processes: list, kill by pid and by tag, signals.

use wrenn_agent_client::ExecOutcome;
use wrenn_types::agent::{BackgroundStarted, ExecRequest, KillSignal};
use wrenn_types::error::AgentErrorCode;

use crate::common::*;

pub async fn background(agent: &TestAgent, mut req: ExecRequest) -> BackgroundStarted {
    req.background = true;
    match agent.client.exec(&req).await.expect("exec") {
        ExecOutcome::Started(s) => s,
        other => panic!("expected background start, got {other:?}"),
    }
}

async fn listed(agent: &TestAgent, pid: u32) -> bool {
    agent
        .client
        .processes()
        .await
        .expect("list")
        .processes
        .iter()
        .any(|p| p.pid == pid)
}

#[tokio::test]
async fn background_list_and_kill_by_tag_and_pid() {
    let agent = TestAgent::start().await;
    let mut req = sh("sleep 60");
    req.tag = Some("my-job".into());
    let job = background(&agent, req.clone()).await;
    assert_eq!(job.tag, "my-job");
    let list = agent.client.processes().await.expect("list");
    let p = list
        .processes
        .iter()
        .find(|p| p.pid == job.pid)
        .expect("listed");
    assert_eq!(p.tag.as_deref(), Some("my-job"));
    assert_eq!(
        (p.cmd.as_str(), p.args.clone()),
        ("/bin/sh", vec!["-c".to_string(), "sleep 60".into()])
    );

    let dup = agent
        .client
        .exec(&ExecRequest {
            background: true,
            ..req
        })
        .await;
    assert_code(dup, AgentErrorCode::AlreadyExists);

    let auto = background(&agent, sh("sleep 60")).await;
    let hex = auto.tag.strip_prefix("proc-").expect("proc- prefix");
    assert!(
        hex.len() == 8
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    agent
        .client
        .kill("my-job", KillSignal::Kill)
        .await
        .expect("kill by tag");
    agent
        .client
        .kill(&auto.pid.to_string(), KillSignal::Kill)
        .await
        .expect("kill by pid");
    for pid in [job.pid, auto.pid] {
        let a = &agent;
        assert!(wait_until(DEADLINE, || async move { !listed(a, pid).await }).await);
        assert!(!alive(pid));
    }
    assert_code(
        agent.client.kill("my-job", KillSignal::Kill).await,
        AgentErrorCode::NotFound,
    );
    assert_code(
        agent.client.kill("999999", KillSignal::Kill).await,
        AgentErrorCode::NotFound,
    );
}

#[tokio::test]
async fn background_applies_env_and_cwd() {
    let agent = TestAgent::start().await;
    let out = agent.path("out.txt");
    let mut req = sh(&format!(
        "echo $GIT_TERMINAL_PROMPT $(pwd) > {}",
        out.display()
    ));
    req.process
        .envs
        .insert("GIT_TERMINAL_PROMPT".into(), "0".into());
    req.process.cwd = Some("/tmp".into());
    let job = background(&agent, req).await;
    let a = &agent;
    assert!(wait_until(DEADLINE, || async move { !listed(a, job.pid).await }).await);
    assert_eq!(std::fs::read_to_string(out).expect("out"), "0 /tmp\n");
}

#[tokio::test]
async fn kill_sigterm_reaches_the_process_group() {
    let agent = TestAgent::start().await;
    let marker = agent.path("term.txt");
    let ready = agent.path("ready");
    let job = background(
        &agent,
        sh(&format!(
            "trap 'echo term > {}; exit 3' TERM; touch {}; while :; do sleep 0.05; done",
            marker.display(),
            ready.display()
        )),
    )
    .await;
    let r = ready.clone();
    assert!(
        wait_until(DEADLINE, || {
            let r = r.clone();
            async move { exists(&r) }
        })
        .await
    );
    agent
        .client
        .kill(&job.tag, KillSignal::Term)
        .await
        .expect("sigterm");
    let a = &agent;
    assert!(wait_until(DEADLINE, || async move { !listed(a, job.pid).await }).await);
    assert_eq!(std::fs::read_to_string(marker).expect("trap ran"), "term\n");
}
