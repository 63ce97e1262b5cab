//! The MCP face of bg-agents: tools and resources that translate to the supervisor's
//! `Manager` and nothing else.

pub mod notify;
mod params;
pub mod reply;
pub mod resources;
mod schema;
mod tasks;
mod text;
mod tools;
pub mod transport;

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, GetTaskResult,
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::task_manager::TaskManager;
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
agent_kill stops an agent for real; agent_list shows all. Write tasks self-contained: \
agents see nothing of your conversation.";

/// The MCP server: one per session, over one manager.
#[derive(Clone)]
pub struct BgAgents {
    manager: Arc<Manager>,
    tool_router: ToolRouter<Self>,
    legacy_subscriptions: Arc<resources::LegacySubscriptions>,
    tasks: TaskManager,
    /// Where notices of ended agents wait; every tool reply carries the undelivered ones.
    notices: Option<Arc<NoticeBoard>>,
}

impl BgAgents {
    pub fn new(manager: Arc<Manager>) -> Self {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            schema::standardize_tool(&mut route.attr);
            schema::declare_notices(&mut route.attr);
            schema::describe_from_config(&mut route.attr, manager.config());
        }
        BgAgents {
            manager,
            tool_router,
            legacy_subscriptions: Arc::default(),
            tasks: TaskManager::new(),
            notices: None,
        }
    }

    /// Makes every tool reply carry the notices of `board` not yet delivered.
    pub fn with_notices(mut self, board: Arc<NoticeBoard>) -> Self {
        self.notices = Some(board);
        self
    }

    /// Ends the session's work: every MCP task ends (aborted, so none outlives the
    /// session), then the manager stops every agent and reaps it.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.tasks.shutdown();
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
        .with_instructions(format!(
            "{INSTRUCTIONS}\nOne call blocks at most {} s on this server.",
            self.manager.config().server.max_wait_seconds
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let wants_task = request.name == "agent_spawn"
            && context
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks());
        if wants_task {
            let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            let params = serde_json::from_value(args)
                .map_err(|e| ErrorData::invalid_params(format!("agent_spawn: {e}"), None))?;
            return Ok(match self.spawn_as_task(params).await? {
                Ok(task) => CallToolResponse::Task(task),
                Err(tool_error) => tool_error.into(),
            });
        }
        let tcc = ToolCallContext::new(self, request, context);
        let mut response = self.tool_router.call(tcc).await?;
        if let (Some(board), CallToolResponse::Complete(reply)) = (&self.notices, &mut response) {
            notify::attach(board, reply);
        }
        Ok(response)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        Ok(GetTaskResult::new(self.tasks.get_task(&request.task_id)?))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.cancel_task(&request.task_id)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bg_agent_worker::config::Config;
    use rmcp::task_manager::TaskOptions;

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

    #[tokio::test]
    async fn shutdown_ends_every_mcp_task() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::builtin().unwrap();
        config.server.transcript_dir = dir.path().display().to_string();
        let server = BgAgents::new(Arc::new(Manager::new(Arc::new(config)).unwrap()));
        // A task that would run forever; `alive` closes when its future is dropped.
        let (alive, ended) = tokio::sync::oneshot::channel::<()>();
        let task = server.tasks.spawn(TaskOptions::new(), move |_ctx| {
            Box::pin(async move {
                let _alive = alive;
                std::future::pending().await
            })
        });
        tokio::task::yield_now().await;
        assert!(server.tasks.get_task(&task.task_id).is_ok());

        server.shutdown().await;

        let dropped = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(
            matches!(dropped, Ok(Err(_))),
            "the task still runs after shutdown"
        );
        assert!(server.tasks.get_task(&task.task_id).is_err());
    }
}
