//! Wire models of the dashboard's live updates (`/admin/live/*`), which `admin.js` polls to
//! refresh a page without reloading it. They are not part of the API document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /admin/live/overview`: the moving parts of the overview page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LiveOverview {
    /// The cards by id.
    pub cards: BTreeMap<String, LiveCard>,
    /// Rendered fragments by element id.
    pub html: OverviewFragments,
}

/// One card of the overview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LiveCard {
    /// The number.
    pub value: String,
    /// A line of context under it.
    pub hint: String,
    /// `ok`, `warn`, `bad` or empty.
    pub tone: String,
}

/// Rendered fragments of the overview (SVG charts, table rows).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OverviewFragments {
    /// API latency chart.
    pub api_chart: String,
    /// Task duration chart.
    pub task_chart: String,
    /// Throughput chart.
    pub throughput_chart: String,
    /// Queue depth chart.
    pub depth_chart: String,
    /// Outcomes chart.
    pub outcomes_chart: String,
    /// Rows of the by-type table.
    pub by_type: String,
    /// Rows of the workers table.
    pub workers: String,
    /// A note when recording began inside the window (or nothing was recorded), else empty.
    pub collecting: String,
}

/// `GET /admin/live/tasks`: counts by status and the first page of rows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LiveTasks {
    /// Formatted counts by status (and `all`).
    pub counts: BTreeMap<String, String>,
    /// Rendered fragments by element id.
    pub html: TaskFragments,
}

/// Rendered fragments of the tasks page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskFragments {
    /// The table's rows.
    pub rows: String,
}
