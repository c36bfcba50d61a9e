// Drake dashboard: one server-sent event stream shared by every open tab of a
// browser. Browsers allow six HTTP/1.1 connections per host and each stream holds
// one for good, so a stream per tab froze the seventh tab. Runs as a SharedWorker;
// app.js connects to it and falls back to a stream of its own where there is none.
"use strict";
const ports = new Set();
let source = null;
let status = "connecting";

function broadcast(message) {
  ports.forEach(function (port) { port.postMessage(message); });
}

function open() {
  const s = new EventSource("/ui/events");
  source = s;
  s.onopen = function () { if (s === source) { status = "connected"; broadcast({ status: status }); } };
  s.onerror = function () {
    if (s !== source) return;
    // EventSource retries by itself unless the server refused it (say, an expired
    // session); then the next page that connects opens a new stream.
    status = s.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
    broadcast({ status: status });
  };
  s.onmessage = function (m) { if (s === source) broadcast({ data: m.data }); };
}

self.onconnect = function (e) {
  const port = e.ports[0];
  ports.add(port);
  port.onmessage = function (m) {
    // A page going away says so; with no page left, the stream closes.
    if (m.data !== "close") return;
    ports.delete(port);
    if (ports.size === 0 && source) { source.close(); source = null; status = "connecting"; }
  };
  port.start();
  if (!source || source.readyState === EventSource.CLOSED) open();
  port.postMessage({ status: status });
};
