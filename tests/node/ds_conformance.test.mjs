// The Durable Streams server conformance suite (@durable-streams/server-conformance-tests),
// pointed at a gateway by tests/test_durable_conformance.py (copied beside node_modules to run).
//   CONFORMANCE_TEST_URL  what the suite puts before /v1/stream/<name>: http://127.0.0.1:PORT/ds/PROJECT
//   DS_LONG_POLL_MS       the gateway's long-poll wait (its GATEWAY_HEARTBEAT_INTERVAL)
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

runConformanceTests({
  baseUrl: process.env.CONFORMANCE_TEST_URL,
  subscriptions: true,
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS),
})
