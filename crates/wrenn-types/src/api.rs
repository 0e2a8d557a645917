//! Public REST shapes of the contract (`wrenn-api.md` §4, §5, §6, §9, §10).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Capsule status (contract §4.2); a closed set the SDK parses strictly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CapsuleStatus {
    /// Accepted, not yet starting (unused: creation starts at once).
    Pending,
    /// Being created.
    Starting,
    /// Running.
    Running,
    /// Being paused.
    Pausing,
    /// Paused: no execution, state kept.
    Paused,
    /// A snapshot is being taken.
    Snapshotting,
    /// Being resumed.
    Resuming,
    /// Being destroyed.
    Stopping,
    /// Legacy; never emitted.
    Hibernated,
    /// Destroyed.
    Stopped,
    /// Its runtime lost it.
    Missing,
    /// Failed; the reason is kept.
    Error,
}

impl CapsuleStatus {
    /// Every status, in the contract's order.
    pub const ALL: [Self; 12] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Pausing,
        Self::Paused,
        Self::Snapshotting,
        Self::Resuming,
        Self::Stopping,
        Self::Hibernated,
        Self::Stopped,
        Self::Missing,
        Self::Error,
    ];

    /// Wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Snapshotting => "snapshotting",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Hibernated => "hibernated",
            Self::Stopped => "stopped",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "pausing" => Self::Pausing,
            "paused" => Self::Paused,
            "snapshotting" => Self::Snapshotting,
            "resuming" => Self::Resuming,
            "stopping" => Self::Stopping,
            "hibernated" => Self::Hibernated,
            "stopped" => Self::Stopped,
            "missing" => Self::Missing,
            "error" => Self::Error,
            _ => return None,
        })
    }

    /// Whether nothing more will happen to the capsule.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Error)
    }
}

impl std::fmt::Display for CapsuleStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The capsule object (contract §4.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capsule {
    /// `cl-` + 25 base36 chars.
    pub id: String,
    /// Status.
    pub status: CapsuleStatus,
    /// Template name.
    pub template: String,
    /// CPUs.
    pub vcpus: u32,
    /// Memory limit.
    pub memory_mb: u32,
    /// Inactivity timeout; 0 = none.
    pub timeout_sec: u32,
    /// Disk limit; 0 = unknown.
    pub disk_size_mb: u32,
    /// Disk used (single GET only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<u64>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last time it entered `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Last exec/file/pty/ping activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<DateTime<Utc>>,
    /// Last change of the record.
    pub last_updated: DateTime<Utc>,
    /// User labels plus system keys once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Why it is in `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/capsules` body (contract §5.1); every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CreateCapsuleRequest {
    /// Template name.
    #[serde(default)]
    pub template: Option<String>,
    /// CPUs; ≤ 0 → default. A snapshot template's own value wins.
    #[serde(default, deserialize_with = "crate::integral::option")]
    pub vcpus: Option<i64>,
    /// Memory, MiB; ≤ 0 → default. A snapshot template's own value wins; a microVM has at
    /// least 128.
    #[serde(default, deserialize_with = "crate::integral::option")]
    pub memory_mb: Option<i64>,
    /// Inactivity timeout; negative → 0, 1..59 → 60.
    #[serde(default, deserialize_with = "crate::integral::option")]
    pub timeout_sec: Option<i64>,
    /// Labels.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Capsule backend (`container` or `microvm`); none = the server's default. A wrenn
    /// extension to the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// Foreground exec answer (contract §6.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Capsule id.
    pub sandbox_id: String,
    /// Program.
    pub cmd: String,
    /// Output.
    pub stdout: String,
    /// Errors.
    pub stderr: String,
    /// Exit status.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// `utf-8` or `base64`.
    pub encoding: crate::agent::OutputEncoding,
}

/// Background exec answer (contract §6.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackgroundExecResponse {
    /// Capsule id.
    pub sandbox_id: String,
    /// Program.
    pub cmd: String,
    /// Process id.
    pub pid: u32,
    /// Tag.
    pub tag: String,
}

/// Template kind (contract §9.2).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TemplateType {
    /// Built-in base.
    Base,
    /// Made from a capsule.
    Snapshot,
}

/// A template (contract §9.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    /// Name.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub template_type: TemplateType,
    /// CPUs baked into a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory baked into a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Size on disk.
    pub size_bytes: u64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Visible to all teams.
    pub platform: bool,
    /// Cannot be deleted.
    pub protected: bool,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// SSE event names (contract §10); a closed set.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EventKind {
    /// First frame.
    #[serde(rename = "connected")]
    Connected,
    /// Create.
    #[serde(rename = "capsule.create")]
    CapsuleCreate,
    /// Pause.
    #[serde(rename = "capsule.pause")]
    CapsulePause,
    /// Resume.
    #[serde(rename = "capsule.resume")]
    CapsuleResume,
    /// Destroy.
    #[serde(rename = "capsule.destroy")]
    CapsuleDestroy,
    /// Intermediate transition.
    #[serde(rename = "capsule.state.changed")]
    CapsuleStateChanged,
    /// Snapshot made.
    #[serde(rename = "template.snapshot.create")]
    SnapshotCreate,
    /// Snapshot deleted.
    #[serde(rename = "template.snapshot.delete")]
    SnapshotDelete,
}

impl EventKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::CapsuleCreate => "capsule.create",
            Self::CapsulePause => "capsule.pause",
            Self::CapsuleResume => "capsule.resume",
            Self::CapsuleDestroy => "capsule.destroy",
            Self::CapsuleStateChanged => "capsule.state.changed",
            Self::SnapshotCreate => "template.snapshot.create",
            Self::SnapshotDelete => "template.snapshot.delete",
        }
    }
}

/// Outcome of an action event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed.
    Error,
}

/// Who caused an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// `user`, `api_key` or `system`.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Key id for `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What an event is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resource {
    /// Capsule id or snapshot name.
    pub id: String,
    /// `sandbox` or `snapshot`.
    #[serde(rename = "type")]
    pub resource_type: String,
}

/// One SSE `data:` payload (contract §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Name.
    pub event: EventKind,
    /// For action events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// Team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// What.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// Extra facts (`reason`, `from`, `to`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The capsule, for capsule events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Capsule>,
}

#[cfg(test)]
mod tests {
    use super::CapsuleStatus;

    #[test]
    fn every_status_round_trips_through_its_wire_string() {
        for s in CapsuleStatus::ALL {
            assert_eq!(CapsuleStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(CapsuleStatus::parse("created"), None);
    }

    /// The public exec answers mirror the agent's and carry the same encoding names.
    #[test]
    fn exec_answers_round_trip() {
        use super::{BackgroundExecResponse, ExecResponse};
        use crate::agent::OutputEncoding;
        let json = r#"{"sandbox_id":"cl-1","cmd":"ls","stdout":"aGk=","stderr":"","exit_code":0,"duration_ms":3,"encoding":"base64"}"#;
        let r: ExecResponse = serde_json::from_str(json).expect("decode");
        assert_eq!(r.encoding, OutputEncoding::Base64);
        assert_eq!(serde_json::to_string(&r).expect("encode"), json);
        let json = r#"{"sandbox_id":"cl-1","cmd":"sleep","pid":9,"tag":"proc-1"}"#;
        let r: BackgroundExecResponse = serde_json::from_str(json).expect("decode");
        assert_eq!((r.pid, r.tag.as_str()), (9, "proc-1"));
        assert_eq!(serde_json::to_string(&r).expect("encode"), json);
    }
}
