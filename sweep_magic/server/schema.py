"""The GraphQL SDL the server answers: the subset of W&B's schema that wandb 0.31's sweep paths select.

Measured against the client (docs/protocol.md §1, §7).  A client query that selects a field missing
here fails validation with a message naming the field, instead of silently getting a wrong shape.
Kept as a Python string (not a .graphql file) so it ships in any wheel without package-data setup.
"""

SDL = """

scalar JSONString   # a JSON document carried as a string (W&B's convention)
scalar JSON         # a raw JSON value

type Query {
  viewer: User
  serverInfo: ServerInfo
  project(name: String, entityName: String): Project
}

type Mutation {
  upsertSweep(input: UpsertSweepInput!): UpsertSweepPayload
  createAgent(input: CreateAgentInput!): CreateAgentPayload
  agentHeartbeat(input: AgentHeartbeatInput!): AgentHeartbeatPayload
}

type User {
  id: ID!
  name: String
  entity: String
  username: String
  email: String
  flags: JSONString
  teams: TeamConnection
}
type TeamConnection { edges: [TeamEdge!]! }
type TeamEdge { node: Team }
type Team { name: String }

type ServerInfo { features: [ServerFeature!]! }
type ServerFeature { name: String! isEnabled: Boolean! }

type Entity { id: ID! name: String! }

type Project {
  id: ID!
  internalId: ID!
  name: String!
  entity: Entity!
  readOnly: Boolean
  runCount(filters: JSONString): Int!
  sweep(sweepName: String!): Sweep
  runs(filters: JSONString, after: String, first: Int, order: String): RunConnection!
  run(name: String!): Run
}

type Sweep {
  id: ID!
  name: String!
  displayName: String
  method: String
  state: String!
  description: String
  bestLoss: Float
  config: String          # YAML
  createdAt: String
  updatedAt: String
  heartbeatAt: String
  earlyStopJobRunning: Boolean
  controller: JSONString
  scheduler: JSONString
  runCount: Int
  runCountExpected: Int
  project: Project
  runs(first: Int, after: String, order: String): RunConnection!
}

type RunConnection { edges: [RunEdge!]! pageInfo: PageInfo! }
type RunEdge { node: Run! cursor: String! }
type PageInfo { endCursor: String hasNextPage: Boolean! }

type Run {
  id: ID!
  projectId: ID!
  name: String!
  displayName: String
  sweepName: String
  state: String
  config: JSONString      # {name: {"value": v}}
  summaryMetrics: JSONString
  systemMetrics: JSONString
  sampledHistory(specs: [JSONString!]!): [JSON]
  historyKeys: JSON
  historyLineCount: Int
  exitcode: Int
  heartbeatAt: String
  createdAt: String
  shouldStop: Boolean
  failed: Boolean
  stopped: Boolean
  running: Boolean
  tags: [String!]
  group: String
  jobType: String
  commit: String
  readOnly: Boolean
  description: String
  notes: String
  user: RunUser
}
type RunUser { name: String username: String }

# The newest UpsertSweep variant's arguments, so the client's first try succeeds.
input UpsertSweepInput {
  id: ID
  config: String
  description: String
  entityName: String
  projectName: String
  controller: JSONString
  launchScheduler: JSONString
  templateVariableValues: JSONString
  scheduler: JSONString
  state: String
  priorRunsFilters: JSONString
  displayName: String
}
type UpsertSweepPayload { sweep: Sweep configValidationWarnings: [String!]! }

input CreateAgentInput { host: String! projectName: String entityName: String sweep: String! }
type CreateAgentPayload { agent: Agent }

input AgentHeartbeatInput { id: ID! metrics: JSONString runState: JSONString }
type AgentHeartbeatPayload { agent: Agent commands: JSONString! }
type Agent { id: ID! }
"""
