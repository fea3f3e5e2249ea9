// Drives Debian's Chromium (headless, via playwright-core) to a local shop page that loads
// real vendor client libraries pointed at tagway. Started by tests/it/browser.rs, which owns
// the gateway and the mock vendors and checks what reached them; this script only runs the
// browser and reports what the page did, as one JSON line on stdout.
//
//   node run.mjs --tracking-port N --spki HASH[,HASH] --shop-cert FILE --shop-key FILE
//
// Every name resolves to loopback or nowhere (--host-resolver-rules): nothing leaves the
// machine. The shop server listens on 127.0.0.1 only.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
import { createServer } from 'node:https'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { build } from 'esbuild'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
const CHROMIUM = process.env.TAGWAY_CHROMIUM || '/usr/bin/chromium'

const { values: opt } = parseArgs({
  options: {
    'tracking-port': { type: 'string' },
    spki: { type: 'string' },
    'shop-cert': { type: 'string' },
    'shop-key': { type: 'string' },
    email: { type: 'string' },
    phone: { type: 'string' },
    token: { type: 'string' },
  },
})
for (const k of ['tracking-port', 'spki', 'shop-cert', 'shop-key', 'email', 'phone', 'token']) {
  if (!opt[k]) throw new Error(`run.mjs: --${k} is required`)
}
const tracking = `https://metrics.shop.example:${opt['tracking-port']}`

// The page's script: the three libraries and page.js, bundled for the browser.
const bundle = await build({
  entryPoints: [join(here, 'page.js')],
  bundle: true,
  write: false,
  format: 'iife',
  platform: 'browser',
  target: 'chrome120',
  logLevel: 'error',
})
const script = bundle.outputFiles[0].text

const html = (shop) => `<!doctype html>
<html><head><meta charset="utf-8"><title>Checkout</title>
<script>window.SHOP = ${JSON.stringify({ tracking, email: opt.email, phone: opt.phone, shop })}</script>
<script src="/app.js"></script>
</head><body><h1>Thank you for your order</h1></body></html>`

const shop = createServer(
  { cert: readFileSync(opt['shop-cert']), key: readFileSync(opt['shop-key']) },
  (req, res) => {
    const path = req.url.split('?')[0]
    if (path === '/app.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      res.end(script)
    } else if (path === '/checkout') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      res.end(html(`https://shop.example:${shop.address().port}`))
    } else if (path === '/favicon.ico') {
      res.writeHead(204)
      res.end()
    } else {
      res.writeHead(404)
      res.end()
    }
  },
)
await new Promise((resolve) => shop.listen(0, '127.0.0.1', resolve))
const shopOrigin = `https://shop.example:${shop.address().port}`

const profile = mkdtempSync(join(tmpdir(), 'tagway-chromium-'))
const requests = []
const tracking_ = []
const failed = []
// Names of the PostHog events the browser has delivered (answered by tagway), read from the
// bodies the library sent: its queue is flushed on a timer, so the run waits for these.
const posthogSent = new Set()
const console_ = []
let context
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // A visitor's browser, not "HeadlessChrome" (which PostHog, like tagway's `when.bot`,
    // treats as a bot and drops).
    userAgent:
      'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/139.0.0.0 Safari/537.36',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // navigator.webdriver stays false, as in a visitor's browser (PostHog drops events
      // from automated browsers).
      '--disable-blink-features=AutomationControlled',
      // Made-up names to loopback, every other name to nowhere.
      '--host-resolver-rules=MAP shop.example 127.0.0.1, MAP metrics.shop.example 127.0.0.1, MAP * ~NOTFOUND',
      // Trust the certificates the test made (their public keys), nothing else.
      `--ignore-certificate-errors-spki-list=${opt.spki}`,
    ],
  })
  const page = context.pages()[0] ?? (await context.newPage())
  page.on('request', (r) => {
    requests.push({ method: r.method(), url: r.url() })
    if (new URL(r.url()).host === new URL(tracking).host) {
      const body = r.postDataBuffer()
      tracking_.push({ method: r.method(), url: r.url(), body: body ? body.toString('base64') : '' })
    }
  })
  page.on('requestfinished', (r) => {
    const u = new URL(r.url())
    if (u.host !== new URL(tracking).host || !u.pathname.startsWith('/ingest/')) return
    for (const name of posthogEventNames(u, r.postDataBuffer())) posthogSent.add(name)
  })
  page.on('requestfailed', (r) =>
    failed.push({ url: r.url(), error: r.failure()?.errorText ?? '' }),
  )
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`))

  // The page URL carries an email and a token, as a password-reset or newsletter link does.
  const q = new URLSearchParams({
    email: opt.email,
    token: opt.token,
    utm_source: 'newsletter',
    utm_campaign: 'spring',
  })
  const url = `${shopOrigin}/checkout?${q}`
  await page.goto(url, { waitUntil: 'load' })
  const libs = await page.evaluate(() => window.tagwayDone)
  // PostHog sends its queue on a timer: wait until every event the page captured went out.
  const want = ['$pageview', '$identify', 'checkout completed', 'flushed']
  for (let i = 0; !want.every((n) => posthogSent.has(n)); i++) {
    if (i >= 600) {
      throw new Error(`PostHog events never sent: ${want.filter((n) => !posthogSent.has(n))}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await page.waitForLoadState('networkidle')
  const report = { shop: shopOrigin, url, libs, requests, tracking: tracking_, failed, console: console_ }
  process.stdout.write(JSON.stringify(report) + '\n')
} catch (e) {
  // What the page did, to say why.
  const sent = [...posthogSent]
  process.stderr.write(JSON.stringify({ requests, tracking: tracking_, failed, console: console_, posthogSent: sent }, null, 1) + '\n')
  throw e
} finally {
  if (context) await context.close()
  shop.close()
  rmSync(profile, { recursive: true, force: true })
}

// The event names in a PostHog request body (gzip-js, base64 form, or JSON).
function posthogEventNames(url, body) {
  if (!body) return []
  try {
    const c = url.searchParams.get('compression')
    let text
    // posthog-js gzips with CompressionStream, marked by compression=gzip-js or by nothing
    // but the gzip magic bytes.
    if (c === 'gzip-js' || c === 'gzip' || (body[0] === 0x1f && body[1] === 0x8b)) {
      text = gunzipSync(body).toString()
    }
    else if (c === 'base64') {
      text = Buffer.from(new URLSearchParams(body.toString()).get('data'), 'base64').toString()
    } else text = body.toString()
    const data = JSON.parse(text)
    const events = Array.isArray(data) ? data : data.batch ?? [data]
    return events.map((e) => e.event).filter(Boolean)
  } catch {
    return []
  }
}
