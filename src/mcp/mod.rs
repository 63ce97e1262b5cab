//! The MCP face of bg-agents: tools and resources that translate to the supervisor's
//! `Manager` and nothing else.

mod fit;
pub mod notify;
mod params;
pub mod reply;
pub mod resources;
mod schema;
pub mod stdio;
mod tasks;
mod text;
mod tools;
pub mod transport;

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    GetTaskParams, GetTaskResult, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};

use crate::notices::NoticeBoard;
use crate::supervisor::{Manager, ShutdownReport};

/// What the client model reads first: when background agents help and how to use them.
pub const INSTRUCTIONS: &str = "\
bg-agents runs background agents: each is a separate OS process working on one task with \
its own model, read-only tools (read_file, glob, grep, and bash: sandboxed commands such \
as git diff, no writes, no network) inside a directory, kernel CPU and memory limits, and token and USD budgets. Use it to hand off side work and keep going: \
exploring how something works, reviewing a diff, tracing behaviour, weighing designs. \
Several agents can run in parallel.\n\
How: agent_spawn {task, task_type?} returns an agent_id at once. task_type picks the model: \
exploration/analysis → fast (Haiku), reasoning → balanced (Sonnet), critical → quality \
(Opus). Continue your own work, then collect answers with agent_wait {agent_ids} (blocks up \
to the server's max wait; call again to keep waiting) or agent_status {agent_id, wait_seconds}; the final \
answer is in `result`. agent_output reads the streamed text (regex filter, paging). \
agent_send {agent_id, message} asks a completed agent a follow-up: it continues its own \
conversation (it remembers what it read), cheaper than a new agent; a running agent gets \
the message at its next turn. \
Where the client runs MCP tasks (Claude Code's interactive mode), agent_spawn answers with a \
task whose id is the agent id, and the agent's end arrives as the task's notification. \
agent_kill stops an agent for real; agent_list shows all. Write tasks self-contained: \
agents see nothing of your conversation.";

/// The MCP server: one per session, over one manager.
#[derive(Clone)]
pub struct BgAgents {
    manager: Arc<Manager>,
    tool_router: ToolRouter<Self>,
    legacy_subscriptions: Arc<resources::LegacySubscriptions>,
    /// Agents answered as MCP tasks (the task id is the agent id).
    agent_tasks: Arc<tasks::AgentTasks>,
    /// Where notices of ended agents wait; every tool reply carries the undelivered ones.
    notices: Option<Arc<NoticeBoard>>,
    /// Why this server runs no agents (its configuration is invalid): every tool call
    /// answers this, so the model and the person see it instead of a server that never
    /// started.
    config_error: Option<Arc<str>>,
}

impl BgAgents {
    pub fn new(manager: Arc<Manager>) -> Self {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            schema::standardize_tool(&mut route.attr);
            schema::declare_notices(&mut route.attr);
            schema::describe_from_config(&mut route.attr, manager.config());
            schema::compact_tool(&mut route.attr);
        }
        BgAgents {
            manager,
            tool_router,
            legacy_subscriptions: Arc::default(),
            agent_tasks: Arc::default(),
            notices: None,
            config_error: None,
        }
    }

    /// Makes every tool call answer `message` as its error (and the instructions say it):
    /// the server's configuration could not be loaded, so it runs no agents.
    pub fn with_config_error(mut self, message: String) -> Self {
        self.config_error = Some(message.into());
        self
    }

    /// Makes every tool reply carry the notices of `board` not yet delivered.
    pub fn with_notices(mut self, board: Arc<NoticeBoard>) -> Self {
        self.notices = Some(board);
        self
    }

    /// Ends the session's work: no MCP task is followed any more, and the manager stops
    /// every agent and reaps it (a client that asks later is told they were stopped).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.agent_tasks.shutdown();
        self.manager.shutdown().await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BgAgents {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_experimental_with(
                    [(notify::CHANNEL_CAPABILITY.to_string(), Default::default())].into(),
                )
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("bg-agents", env!("CARGO_PKG_VERSION")))
        .with_instructions(match &self.config_error {
            Some(e) => format!("{INSTRUCTIONS}\nThis server cannot run agents now: {e}"),
            None => format!(
                "{INSTRUCTIONS}\nOne call blocks at most {} s on this server.",
                self.manager.config().server.max_wait_seconds
            ),
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(e) = &self.config_error {
            return Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into());
        }
        if request.name == "agent_spawn" && answers_with_tasks(&context) {
            let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            let params = serde_json::from_value(args)
                .map_err(|e| ErrorData::invalid_params(format!("agent_spawn: {e}"), None))?;
            return Ok(match self.spawn_as_task(params).await {
                Ok(task) => CallToolResponse::Task(task),
                Err(tool_error) => tool_error.into(),
            });
        }
        let reading = self
            .agent_tasks
            .reading(&request.name, request.arguments.as_ref());
        let tcc = ToolCallContext::new(self, request, context);
        let mut response = self.tool_router.call(tcc).await?;
        if let CallToolResponse::Complete(reply) = &mut response {
            if let Some(v) = &reply.structured_content {
                self.agent_tasks.note_told(v);
            }
            drop(reading);
            if let Some(board) = &self.notices {
                notify::attach(board, reply);
            }
        }
        Ok(response)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        Ok(GetTaskResult::new(self.agent_task(&request.task_id)))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // An agent never asks its client for input: there is nothing to answer.
        Err(ErrorData::invalid_params(
            format!(
                "task {} asked for no input: bg-agents tasks take none (agent_send gives an agent a follow-up)",
                request.task_id
            ),
            None,
        ))
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.cancel_agent_task(&request.task_id)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resources::templates())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(resources::list(&self.manager))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        resources::read(&self.manager, &request.uri).map(Into::into)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        resources::listen(&self.manager, context).await
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.legacy_subscriptions
            .subscribe(Arc::clone(&self.manager), request.uri, context.peer)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.legacy_subscriptions.unsubscribe(&request.uri);
        Ok(())
    }
}

/// Whether a `tools/call` may be answered with a task: only under protocol 2026-07-28
/// (or later) when the request's client capabilities declare the tasks extension. The
/// legacy era's task-augmented requests (`params.task`) are not read by rmcp 3.11, so
/// legacy clients always get the plain result.
fn answers_with_tasks(context: &RequestContext<RoleServer>) -> bool {
    let modern = context
        .protocol_version()
        .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
    modern
        && context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks())
}

#[cfg(test)]
mod tests {
    use bg_agent_worker::config::Config;

    use super::*;

    #[tokio::test]
    async fn parameter_descriptions_tell_this_servers_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::builtin().unwrap();
        config.server.transcript_dir = dir.path().display().to_string();
        config.server.max_wait_seconds = 17;
        config.server.kill_grace_ms = 345;
        config.defaults.cpu_seconds = 123;
        config.max.cpu_seconds = 4567;
        config.max.budget_usd = 2.5;
        let roles: Vec<String> = config.roles.keys().cloned().collect();
        let server = BgAgents::new(Arc::new(Manager::new(Arc::new(config)).unwrap()));
        let tool = |name: &str| {
            let route = server.tool_router.map.get(name).unwrap();
            serde_json::to_string(&route.attr.input_schema).unwrap()
        };
        let spawn = tool("agent_spawn");
        assert_eq!(
            spawn.matches("default 123, at most 4567").count(),
            1,
            "{spawn}"
        );
        assert_eq!(spawn.matches("Roles of this server").count(), 1, "{spawn}");
        assert!(spawn.contains("at most 2.5"), "{spawn}");
        assert!(!spawn.contains("Default 600"), "{spawn}");
        for role in &roles {
            assert!(spawn.contains(role.as_str()), "{role}: {spawn}");
        }
        for name in ["agent_status", "agent_output", "agent_wait"] {
            let s = tool(name);
            assert!(s.contains("at most 17 s"), "{name}: {s}");
            assert!(!s.contains("50 s"), "{name}: {s}");
            let d = server.tool_router.map[name].attr.description.as_deref();
            let d = d.unwrap_or_default();
            assert!(d.ends_with("The server's max wait: 17 s."), "{name}: {d}");
            assert!(!d.contains("50 s"), "{name}: {d}");
        }
        let info = server.get_info();
        let instructions = info.instructions.as_deref().unwrap_or_default();
        assert!(instructions.contains("at most 17 s"), "{instructions}");
        assert!(!instructions.contains("50 s"), "{instructions}");
        let kill = tool("agent_kill");
        assert!(kill.contains("default 345, at most 60000"), "{kill}");
        server.shutdown().await;
    }
}
