//! Lifecycle events: published by the capsule service, consumed by the SSE endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::broadcast;
use wrenn_types::api::{Actor, Capsule, Event, EventKind, Outcome, Resource};

/// An event and the team that may see it.
#[derive(Debug, Clone)]
pub struct TeamEvent {
    /// Owning team.
    pub team_id: String,
    /// Payload.
    pub event: Event,
}

/// Fan-out of events to every subscriber; slow subscribers lose the oldest events.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<TeamEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus buffering 256 events per subscriber.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(256).0,
        }
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TeamEvent>> {
        self.tx.subscribe()
    }

    /// Publishes `action` about `capsule` to `team_id`'s subscribers.
    pub fn capsule(&self, team_id: &str, capsule: &Capsule, action: Action) {
        let resource = Resource {
            id: capsule.id.clone(),
            resource_type: "sandbox".into(),
        };
        let metadata = action.metadata.clone();
        self.publish(team_id, action, resource, metadata, Some(capsule.clone()));
    }

    /// Publishes `action` about snapshot template `name` to `team_id`'s subscribers.
    pub fn snapshot(&self, team_id: &str, name: &str, action: Action) {
        let mut metadata = action.metadata.clone().unwrap_or_default();
        metadata.insert("name".to_owned(), name.to_owned());
        let resource = Resource {
            id: name.to_owned(),
            resource_type: "snapshot".into(),
        };
        self.publish(team_id, action, resource, Some(metadata), None);
    }

    fn publish(
        &self,
        team_id: &str,
        action: Action,
        resource: Resource,
        metadata: Option<BTreeMap<String, String>>,
        sandbox: Option<Capsule>,
    ) {
        let event = Event {
            event: action.kind,
            outcome: action.outcome,
            timestamp: Utc::now(),
            team_id: Some(team_id.to_owned()),
            actor: Some(action.actor),
            resource: Some(resource),
            metadata,
            error: action.error,
            sandbox,
        };
        // No subscribers is not an error.
        let _ = self.tx.send(Arc::new(TeamEvent {
            team_id: team_id.to_owned(),
            event,
        }));
    }
}

/// What happened, by whom, and how it ended.
#[derive(Debug, Clone)]
pub struct Action {
    /// Event name.
    pub kind: EventKind,
    /// Outcome, for action events.
    pub outcome: Option<Outcome>,
    /// Who.
    pub actor: Actor,
    /// Extra facts.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Failure reason.
    pub error: Option<String>,
}

impl Action {
    /// `kind` succeeded (or was accepted), done by `actor`.
    pub fn success(kind: EventKind, actor: &Actor) -> Self {
        Self {
            kind,
            outcome: Some(Outcome::Success),
            actor: actor.clone(),
            metadata: None,
            error: None,
        }
    }

    /// `kind` failed with `error` (its host paths scrubbed: the team reads it); failures are
    /// the system's to report.
    pub fn failure(kind: EventKind, error: String) -> Self {
        Self {
            kind,
            outcome: Some(Outcome::Error),
            actor: system_actor(),
            metadata: None,
            error: Some(crate::error::scrub_host_paths(&error)),
        }
    }

    /// A transition between two statuses.
    pub fn state_changed(from: &str, to: &str) -> Self {
        Self {
            kind: EventKind::CapsuleStateChanged,
            outcome: None,
            actor: system_actor(),
            metadata: Some(BTreeMap::from([
                ("from".to_owned(), from.to_owned()),
                ("to".to_owned(), to.to_owned()),
            ])),
            error: None,
        }
    }

    /// Adds `metadata`.
    pub fn with_metadata(mut self, metadata: Option<BTreeMap<String, String>>) -> Self {
        self.metadata = metadata;
        self
    }
}

/// The actor for work the server does on its own.
pub fn system_actor() -> Actor {
    Actor {
        actor_type: "system".into(),
        id: None,
        name: None,
    }
}
