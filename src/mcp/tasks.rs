//! The MCP tasks extension (`io.modelcontextprotocol/tasks`): for clients that declare
//! it, `agent_spawn` answers with a task whose status and result follow the agent's.
//! The agent is spawned (or refused) before the task exists, so caller mistakes are
//! still plain tool errors; cancelling the task kills the agent.

use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, CreateTaskResult};
use rmcp::task_manager::{TaskExit, TaskOptions};

use super::BgAgents;
use super::params::SpawnParams;
use super::reply::AgentReply;
use super::text;
use crate::supervisor::Status;

/// How long one internal wait lasts before the task checks again.
const WAIT_SLICE: Duration = Duration::from_secs(3600);

impl BgAgents {
    pub(super) async fn spawn_as_task(
        &self,
        p: SpawnParams,
    ) -> Result<Result<CreateTaskResult, CallToolResult>, ErrorData> {
        let view = match self.spawn_agent(p).await {
            Ok(v) => v,
            Err(message) => {
                return Ok(Err(CallToolResult::error(vec![ContentBlock::text(
                    message,
                )])));
            }
        };
        let manager = std::sync::Arc::clone(&self.manager);
        let id = view.agent_id.clone();
        let options = TaskOptions::new()
            .with_poll_interval_ms(1000)
            .with_status_message(format!("agent {id} {}", view.status.as_str()));
        let task = self.tasks.spawn(options, move |ctx| {
            Box::pin(async move {
                let status = loop {
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            let _ = manager.kill(&id, None).await;
                            return Err(TaskExit::Cancelled);
                        }
                        r = manager.wait_status(&id, WAIT_SLICE) => match r {
                            Ok(v) if v.status.is_terminal() => break v,
                            Ok(_) => continue,
                            Err(e) => return Err(TaskExit::Error(ErrorData::internal_error(e.to_string(), None))),
                        }
                    }
                };
                let view = AgentReply::of(&status, manager.config(), false, super::tools::RESULT_MAX_BYTES);
                let readable = text::status(&view, None);
                let structured = serde_json::to_value(&view).map_err(|e| TaskExit::Error(ErrorData::internal_error(e.to_string(), None)))?;
                if view.status == Status::Completed {
                    let mut r = CallToolResult::structured(structured);
                    r.content = vec![ContentBlock::text(readable)];
                    Ok(r)
                } else {
                    Err(TaskExit::Error(ErrorData::internal_error(readable, Some(structured))))
                }
            })
        });
        Ok(Ok(CreateTaskResult::new(task)))
    }
}
