// Reads an SSE URL with @ag-ui/client's own HTTP and SSE parsing; prints the parsed events as JSON.
const { runHttpRequest, parseSSEStream } = require("@ag-ui/client");

const url = process.argv[2];
const events = [];
parseSSEStream(runHttpRequest(() => fetch(url, { headers: { accept: "text/event-stream" } }))).subscribe({
  next: (event) => events.push(event),
  error: (err) => { console.error(err); process.exit(1); },
  complete: () => process.stdout.write(JSON.stringify(events)),
});
