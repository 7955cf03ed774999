// Herald browser test: long polling and streaming with fetch() survive the loss of their edge.
//
// Drives Debian's chromium with playwright-core (launched by browser.mjs). Opens --url,
// the page poll_stream.html (served by the test from another origin than the edges'), which
// runs a long-polling client and a streaming client of one topic through a proxy in front of
// the edges. Reports on stdout, one JSON object a line, what the test driving it
// (tests/integration/test_24_browser_poll_stream.py) needs to know:
//   {"event":"connected"}                 a long poll is in flight and the stream is open
//   {"event":"reached","count":N}         both clients hold N messages, for each N of --report-at
//                                         (the test kills or restarts an edge, publishes more)
//   {"event":"done","poll":{...},"stream":{...},"screenshot":"..."}
//                                         both hold --expect messages (then --settle-ms more, to
//                                         catch duplicates); each client's received messages,
//                                         log, and request or connect count
//   {"event":"error","message":"..."}     anything else; exit status 1
// Every wait is bounded by --timeout-ms. The browser gets a fresh --user-data-dir.
//
// Usage: node poll_stream_failover.mjs --url URL --user-data-dir DIR --screenshot PNG
//          [--report-at 10,20] [--expect 30] [--settle-ms 500] [--timeout-ms 60000]

import { parseArgs, report, run } from './browser.mjs';

const args = parseArgs(process.argv, { reportAt: '10', expect: 30, settleMs: 500, timeoutMs: 60000 },
  { '--report-at': 'reportAt', '--expect': 'expect' });
args.reportAt = args.reportAt.split(',').filter((s) => s !== '').map(Number);

run(args, async (page, left) => {
  await page.waitForFunction(() => window.herald.poll.inFlight && window.herald.stream.open,
    null, { timeout: left(), polling: 50 });
  report({ event: 'connected' });
  const both = (n) => window.herald.poll.received.length >= n &&
    window.herald.stream.received.length >= n;
  for (const n of args.reportAt) {
    await page.waitForFunction(both, n, { timeout: left(), polling: 50 });
    report({ event: 'reached', count: n });
  }
  await page.waitForFunction(both, args.expect, { timeout: left(), polling: 50 });
  await page.waitForTimeout(Math.min(args.settleMs, left()));
  const state = await page.evaluate(() => {
    const { poll, stream } = window.herald;
    return {
      poll: { received: poll.received, log: poll.log, requests: poll.requests },
      stream: { received: stream.received, log: stream.log, connects: stream.connects },
    };
  });
  await page.screenshot({ path: args.screenshot, fullPage: true, timeout: left() });
  report({ event: 'done', ...state, screenshot: args.screenshot });
});
