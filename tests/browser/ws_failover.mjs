// Herald browser test: a page's WebSocket survives the loss of its edge.
//
// Drives Debian's chromium with playwright-core (launched by browser.mjs). Opens --url, the page
// ws.html (served by the test from another origin than the edges'), whose WebSocket client of
// one topic goes through a proxy in front of the edges and reconnects with its cursor. Reports
// on stdout, one JSON object a line, what the test driving it
// (tests/integration/test_33_ws_browser.py) needs to know:
//   {"event":"connected"}                 the page's WebSocket is open and subscribed
//   {"event":"published","from":A,"to":B,"acks":[...]}
//                                         the page published m<A>..m<B> over its WebSocket
//                                         (--publish A-B@N: once it holds N messages) and got
//                                         every `published` answer
//   {"event":"reached","count":N}         the page holds N messages, for each N of --report-at
//                                         (the test kills or restarts an edge, publishes more)
//   {"event":"done","received":[...],"acks":[...],"log":[...],"closes":[...],"connects":N,
//    "screenshot":"..."}                  the page holds --expect messages (then --settle-ms
//                                         more, to catch duplicates)
//   {"event":"error","message":"..."}     anything else; exit status 1
// Every wait is bounded by --timeout-ms. The browser gets a fresh --user-data-dir.
//
// Usage: node ws_failover.mjs --url URL --user-data-dir DIR --screenshot PNG
//          [--publish 1-10@0,21-30@20] [--report-at 10,20] [--expect 30] [--settle-ms 500]
//          [--timeout-ms 60000]

import { parseArgs, report, run } from './browser.mjs';

const args = parseArgs(process.argv,
  { publish: '', reportAt: '10', expect: 30, settleMs: 500, timeoutMs: 60000 },
  { '--publish': 'publish', '--report-at': 'reportAt', '--expect': 'expect' });
const reportAt = args.reportAt.split(',').filter((s) => s !== '').map(Number);
const publishes = args.publish.split(',').filter((s) => s !== '').map((s) => {
  const [range, at] = s.split('@');
  const [from, to] = range.split('-').map(Number);
  return { from, to, at: Number(at) };
});

run(args, async (page, left) => {
  await page.waitForFunction(() => window.herald.open, null, { timeout: left(), polling: 50 });
  report({ event: 'connected' });
  const marks = [...new Set([...reportAt, ...publishes.map((p) => p.at)])].sort((x, y) => x - y);
  const holds = (n) => window.herald.received.length >= n;
  for (const n of marks) {
    await page.waitForFunction(holds, n, { timeout: left(), polling: 50 });
    for (const p of publishes.filter((q) => q.at === n)) {
      // over the page's open socket (it holds n messages: it is subscribed on this connection)
      await page.waitForFunction(() => window.herald.open, null, { timeout: left(), polling: 50 });
      const acks = await page.evaluate(([from, to]) => window.heraldPublish(from, to)
        .then((answers) => answers.map((a) => ({ req: a.req, id: a.id, seq: a.seq }))),
      [p.from, p.to]);
      report({ event: 'published', from: p.from, to: p.to, acks });
    }
    if (reportAt.includes(n)) report({ event: 'reached', count: n });
  }
  await page.waitForFunction(holds, args.expect, { timeout: left(), polling: 50 });
  await page.waitForTimeout(Math.min(args.settleMs, left()));
  const state = await page.evaluate(() => {
    const h = window.herald;
    return { received: h.received, acks: h.acks, log: h.log, closes: h.closes,
             connects: h.connects };
  });
  await page.screenshot({ path: args.screenshot, fullPage: true, timeout: left() });
  report({ event: 'done', ...state, screenshot: args.screenshot });
});
