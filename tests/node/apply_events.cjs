// Applies event sequences with @ag-ui/client's own defaultApplyEvents and runs its compactEvents.
// stdin: {"sequences": [[event, ...], ...]}; stdout: [{"messages", "state", "compacted"}, ...].
process.env.SUPPRESS_TRANSFORMATION_WARNINGS = "true";
console.warn = () => {};
const { defaultApplyEvents, compactEvents, transformChunks } = require("@ag-ui/client");
const { from, lastValueFrom, toArray } = require("rxjs");

async function apply(events) {
  const agent = { messages: [], state: {} };
  const input = { threadId: "t", runId: "r", messages: [], state: {}, tools: [], context: [], forwardedProps: {} };
  let messages = [];
  let state = {};
  // Chunk events are expanded first, as an agent does before applying.
  const updates = await lastValueFrom(
    defaultApplyEvents(input, from(events).pipe(transformChunks()), agent, []).pipe(toArray()));
  for (const u of updates) {
    if (u.messages !== undefined) messages = u.messages;
    if (u.state !== undefined) state = u.state;
  }
  return { messages: JSON.parse(JSON.stringify(messages)), state: JSON.parse(JSON.stringify(state)) };
}

let text = "";
process.stdin.setEncoding("utf8"); // chunks may split a character
process.stdin.on("data", (d) => { text += d; });
process.stdin.on("end", async () => {
  const { sequences } = JSON.parse(text);
  const out = [];
  for (const events of sequences) {
    const result = await apply(events);
    result.compacted = compactEvents(events);
    out.push(result);
  }
  process.stdout.write(JSON.stringify(out));
});
