//! Server-sent lifecycle events (contract §10).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseFrame, KeepAlive, Sse};
use axum::response::IntoResponse;
use chrono::Utc;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use wrenn_types::api::{Event, EventKind};

use crate::auth::Caller;
use crate::AppState;

fn frame(event: &Event) -> SseFrame {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    SseFrame::default().event(event.event.as_str()).data(data)
}

pub(super) async fn stream(State(state): State<AppState>, caller: Caller) -> impl IntoResponse {
    let rx = state.events.subscribe();
    let team = caller.team_id;
    let connected = Event {
        event: EventKind::Connected,
        outcome: None,
        timestamp: Utc::now(),
        team_id: Some(team.clone()),
        actor: None,
        resource: None,
        metadata: None,
        error: None,
        sandbox: None,
    };
    let events = futures_util::stream::unfold(
        (rx, team, Some(connected)),
        |(mut rx, team, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(frame(&first)), (rx, team, None)));
            }
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.team_id == team => {
                        return Some((Ok(frame(&ev.event)), (rx, team, None)));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let sse: Sse<_> = Sse::new(Box::pin(events) as std::pin::Pin<Box<dyn Stream<Item = _> + Send>>)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(30))
                .text("keepalive"),
        );
    (
        [("cache-control", "no-cache"), ("x-accel-buffering", "no")],
        sse,
    )
}
