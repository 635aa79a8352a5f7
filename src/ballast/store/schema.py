"""Tables of the control-plane store (SQLAlchemy Core; SQLite and PostgreSQL).

The Alembic migrations in `migrations/` create exactly these; a test checks
that the migrated schema and this metadata agree.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table,
                        Text, UniqueConstraint, Index, false)

metadata = MetaData()

# One row per counter: 'rv' is the global resource version bumped by every write.
counters = Table(
    "counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

cells = Table(
    "cells", metadata,
    Column("name", String(63), primary_key=True),
    Column("zone", String(63), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
)

nodes = Table(
    "nodes", metadata,
    Column("name", String(63), primary_key=True),
    Column("cell", String(63), nullable=False),
    Column("zone", String(63), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("cpu_millis", BigInteger, nullable=False),
    Column("memory_bytes", BigInteger, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("registered_at", Float, nullable=False),
    Column("last_heartbeat", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    # Cordoned: no new instances land here; `ballast node drain` moves the running ones away.
    Column("cordoned", Boolean, nullable=False, server_default=false()),
    Column("metrics_address", String(128), nullable=True),   # IP:PORT of the agent's telemetry endpoint
    # The node lifecycle controller's judgement (Ready | NotReady | Degraded), when and why it was made.
    Column("lifecycle", String(16), nullable=False, server_default="Ready"),
    Column("lifecycle_since", Float, nullable=True),
    Column("lifecycle_reason", Text, nullable=False, server_default=""),
    Column("conditions", JSON, nullable=True),   # the agent's last report of its own health (core/node_health.py)
)

# Control-plane leadership: one row per lease; `epoch` grows with every new holder and fences its writes.
leases = Table(
    "leases", metadata,
    Column("name", String(63), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

apps = Table(
    "apps", metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("latest_revision", Integer, nullable=False),
    Column("deployed_revision", Integer, nullable=False),
    Column("status", JSON, nullable=False),   # controller's last decision: unplaced counts and reasons
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
)

revisions = Table(
    "revisions", metadata,
    Column("app", String(63), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("hash", String(80), nullable=False),
    Column("template", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("app", "hash", name="uq_revisions_app_hash"),
)

instances = Table(
    "instances", metadata,
    Column("id", String(80), primary_key=True),
    Column("app", String(63), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("node", String(63), nullable=False),
    Column("cell", String(63), nullable=False),
    Column("zone", String(63), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("port", Integer, nullable=True),
    Column("desired", String(16), nullable=False),   # running | deleted
    Column("phase", String(16), nullable=False),
    Column("ready", Boolean, nullable=False),
    Column("restarts", Integer, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("message", Text, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
    Column("desired_version", BigInteger, nullable=False),   # rv of the last change to what the agent must do
    Column("running_revision", Integer, nullable=True),       # what the agent reports running
    Column("replaces", String(80), nullable=True),            # replace-mode releases: the instance this one replaces
    Column("ordinal", Integer, nullable=True),                # ordered identity (APP-0, APP-1, ...)
    Column("changed_at", Float, nullable=True),               # when the desired revision last changed
    # What the agent is told: the intent above, once the drain protocol allows it (core/endpoints.py).
    Column("granted_revision", Integer, nullable=False),
    Column("granted_desired", String(16), nullable=False),
    Column("mesh_port", Integer, nullable=True),              # the sidecar's outbound listener (BALLAST_MESH_URL)
    Column("drain", JSON, nullable=True),                     # the agent's report of the last in-flight wait
    Column("group_code", String(63), nullable=False, server_default=""),  # its IsolationGroup's code; "": default
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    # The list's order (GET /v1/instances pages by it) and, by its prefix, an app's instances.
    Index("ix_instances_app_cell_id", "app", "cell", "id"),
    Index("ix_instances_node", "node"),
    Index("ix_instances_resource_version", "resource_version"),   # a watch: what changed after a version
)

# What a watch of instances reports as DELETED: an instance row is deleted when the instance is gone, so the
# transaction that deletes it writes its tombstone here (its filterable fields as they last were, at the
# deleting transaction's version). Tombstones are pruned by age in a later deleting transaction; the highest
# version pruned is the counters row `instance-tombstones-pruned`, and a watch from before it is 410 Gone.
instance_tombstones = Table(
    "instance_tombstones", metadata,
    Column("resource_version", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(80), primary_key=True),
    Column("app", String(63), nullable=False),
    Column("cell", String(63), nullable=False),
    Column("node", String(63), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("ready", Boolean, nullable=False),
    Column("desired", String(16), nullable=False),
    Column("deleted_at", Float, nullable=False),
)

users = Table(
    "users", metadata,
    Column("name", String(63), primary_key=True),
    Column("created_at", Float, nullable=False),
)

role_bindings = Table(
    "role_bindings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(63), nullable=False),
    Column("role", String(32), nullable=False),
    Column("apps", JSON, nullable=True),   # null: all apps and non-app resources
    # When the binding was made and by whom (maker-checker weighs both); 0 and null: before records were kept.
    Column("created_at", Float, nullable=False, server_default="0"),
    Column("granted_by", String(63), nullable=True),
    Index("ix_role_bindings_user", "user"),
)

tokens = Table(
    "tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(63), nullable=False),
    Column("name", String(128), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

# One-time join tokens: exchanged once (POST /v1/join) for a node's or gateway's own credential.
join_tokens = Table(
    "join_tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=True),          # node | gateway; null: either
    Column("name", String(63), nullable=True),          # null: any name that has not joined yet
    Column("created_by", String(63), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    Column("used_for", String(63), nullable=True),      # the component principal it made (node/NAME)
)

artifacts = Table(
    "artifacts", metadata,
    Column("digest", String(80), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

audit = Table(
    "audit", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("actor", String(63), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(255), nullable=False),
    Column("before", String(80), nullable=False),
    Column("after", String(80), nullable=False),
    Column("result", String(255), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# Single row (id=1): the chain head, advanced by compare-and-set on seq.
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

releases = Table(
    "releases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(63), nullable=False),
    Column("kind", String(16), nullable=False),        # release | scale | evacuate
    Column("from_revision", Integer, nullable=False),
    Column("to_revision", Integer, nullable=False),
    Column("strategy", JSON, nullable=False),
    Column("plan", JSON, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("completed_groups", Integer, nullable=False),
    Column("pause_until", Float, nullable=True),
    Column("fast", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("waiting", Text, nullable=False),
    Column("created_by", String(63), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("resource_version", BigInteger, nullable=False),
    Index("ix_releases_app", "app"),
)

release_events = Table(
    "release_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("release_id", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(63), nullable=False),
    Column("action", String(32), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_release_events_release", "release_id"),
)

# The service registry: one endpoint per instance that is or was routable.
endpoints = Table(
    "endpoints", metadata,
    Column("id", String(80), primary_key=True),       # the instance id
    Column("service", String(63), nullable=False),
    Column("node", String(63), nullable=False),
    Column("cell", String(63), nullable=False),
    Column("zone", String(63), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("port", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("state", String(16), nullable=False),      # ready | draining | removed
    Column("generation", BigInteger, nullable=False),  # the resource version of the last state change
    Column("since", Float, nullable=False),
    Column("required", JSON, nullable=False),          # components that must acknowledge this generation
    Column("note", Text, nullable=False),              # why it is stuck (an acknowledgement timed out)
    Column("group_code", String(63), nullable=False, server_default=""),  # its instance's group; "": default pool
    Index("ix_endpoints_service", "service"),
)

# Traffic components: the mesh of each node (its agent, for its sidecars) and each gateway.
components = Table(
    "components", metadata,
    Column("kind", String(16), primary_key=True),      # mesh | gateway
    Column("name", String(63), primary_key=True),
    Column("address", String(128), nullable=False),
    Column("acked_generation", BigInteger, nullable=False),
    Column("applied_hash", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("registered_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("metrics_address", String(128), nullable=True),   # IP:PORT of its telemetry endpoint
    Column("acked_by", String(32), nullable=True),           # the token id whose request acknowledged last
)

# Change windows: when release orders may start.
change_windows = Table(
    "change_windows", metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
)

# Release orders: one change request over several apps, approved, then run in dependency order.
orders = Table(
    "orders", metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", JSON, nullable=False),              # as applied, with every target revision resolved
    Column("digest", String(80), nullable=False),      # of the spec: approvals are for exactly this
    Column("phase", String(16), nullable=False),
    Column("rolling_back", Boolean, nullable=False),
    Column("emergency", Boolean, nullable=False),
    Column("reason", Text, nullable=False),             # why it is in its phase
    Column("waiting", Text, nullable=False),
    Column("author", String(63), nullable=False),
    Column("started_by", String(63), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("resource_version", BigInteger, nullable=False),
)

# One row per app of an order: the releases the order ran for it.
order_items = Table(
    "order_items", metadata,
    Column("order_name", String(63), primary_key=True),
    Column("app", String(63), primary_key=True),
    Column("to_revision", Integer, nullable=False),
    Column("from_revision", Integer, nullable=True),   # what the app ran when its release started
    Column("release_id", Integer, nullable=True),      # the current forward release
    Column("undo_release_id", Integer, nullable=True),  # the release back, when a finished app was rolled back
    Column("unchanged", Boolean, nullable=False),
    Column("releases", JSON, nullable=False),           # every release id the order ran for this app
)

order_approvals = Table(
    "order_approvals", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_name", String(63), nullable=False),
    Column("user", String(63), nullable=False),
    Column("decision", String(16), nullable=False),    # approve | reject
    Column("emergency", Boolean, nullable=False),
    Column("comment", Text, nullable=False),
    Column("digest", String(80), nullable=False),       # the spec it was given for
    Column("voided", Boolean, nullable=False),          # the order changed after it
    Column("ts", Float, nullable=False),
    Index("ix_order_approvals_order", "order_name"),
)

order_events = Table(
    "order_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_name", String(63), nullable=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(63), nullable=False),
    Column("action", String(32), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_order_events_order", "order_name"),
)

# Verification of release groups: one row per attempt to judge a group from the traffic it served.
verifications = Table(
    "verifications", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("release_id", Integer, nullable=False),
    Column("group_index", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),        # verifying | passed | failed | inconclusive | abandoned
    Column("canary_revision", Integer, nullable=False),
    Column("baseline_revision", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("start_reading", JSON, nullable=False),      # cumulative counts per series when the window opened
    Column("result", JSON, nullable=False),             # the verdict's numbers, checks and notes
    Column("summary", Text, nullable=False),
    Column("accepted_by", String(63), nullable=True),   # a person resumed the release past this verdict
    Column("resource_version", BigInteger, nullable=False),
    Index("ix_verifications_release", "release_id"),
)

# Traffic rules (TrafficRule) and marking rules (ColoringRule): what the data plane routes and colors by.
traffic_rules = Table(
    "traffic_rules", metadata,
    Column("kind", String(16), primary_key=True),        # TrafficRule | ColoringRule
    Column("name", String(63), primary_key=True),
    Column("service", String(63), nullable=True),        # the service a TrafficRule governs
    Column("spec", JSON, nullable=False),
    Column("owner", String(100), nullable=False),        # "" for a user's; "release/<id>" for a release's own
    Column("generation", BigInteger, nullable=False),    # the registry generation that brought its last change
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
)

# Isolation groups (business units): instances of an app set apart for one business flow, in no default pool.
isolation_groups = Table(
    "isolation_groups", metadata,
    Column("name", String(63), primary_key=True),
    Column("app", String(63), nullable=False),
    Column("code", String(63), nullable=False),          # the unit's code, shared by the groups of one unit
    Column("spec", JSON, nullable=False),
    Column("status", JSON, nullable=False),              # the scheduler's last decision: unplaced counts and reasons
    Column("generation", BigInteger, nullable=False),    # the registry generation that brought its last routing change
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    UniqueConstraint("app", "code", name="uq_isolation_groups_app_code"),
)

# Scheduled tasks: a batch split into shards, each an ordinary call the gateway makes through the data plane.
scheduled_tasks = Table(
    "scheduled_tasks", metadata,
    Column("name", String(63), primary_key=True),
    Column("service", String(63), nullable=False),       # the target app (whose operators manage the task)
    Column("spec", JSON, nullable=False),
    Column("considered_until", Float, nullable=False),   # every scheduled time up to here is decided
    Column("status", JSON, nullable=False),              # the controller's last decision: missed counts, next time
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("resource_version", BigInteger, nullable=False),
)

# One row per run (and per scheduled time skipped or missed): at most one per scheduled time, even across a crash.
task_runs = Table(
    "task_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task", String(63), nullable=False),
    Column("trigger", String(16), nullable=False),       # schedule | manual
    Column("scheduled_for", Float, nullable=False),      # the scheduled time (a manual run: when it was asked for)
    Column("state", String(16), nullable=False),         # pending | running | succeeded | failed | skipped | missed
    Column("reason", Text, nullable=False),
    Column("actor", String(63), nullable=False),         # system, or the user of a manual run
    Column("spec", JSON, nullable=False),                # the task's spec when the run was made: its shards call this
    Column("shards", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    UniqueConstraint("task", "trigger", "scheduled_for", name="uq_task_runs_task_trigger_time"),
    Index("ix_task_runs_task", "task"),
)

task_shards = Table(
    "task_shards", metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("index", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),         # pending | claimed | succeeded | failed | cancelled
    Column("claims", Integer, nullable=False),           # how often a gateway claimed it (a lease ran out: again)
    Column("attempts", Integer, nullable=False),         # calls made, as the executor reported with the outcome
    Column("claimed_by", String(63), nullable=True),     # the gateway holding (or last holding) it
    Column("lease_until", Float, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("instance", String(80), nullable=True),       # the instance that served the call (x-ballast-served-by)
    Column("group_code", String(63), nullable=True),     # its isolation group ("" the default pool), from endpoints
    Column("error", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("claimed_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_task_shards_state", "state"),
)
