// The shop page's tracking code: three real client libraries from npm, configured the way a
// site configures them behind a first-party gateway (only the host changes), and personal data
// planted where real sites leak it. Bundled by run.mjs with esbuild; `window.SHOP` is set by the
// page (tracking origin and the planted values).
import posthog from 'posthog-js'
import Plausible from 'plausible-tracker'
import { AnalyticsBrowser } from '@segment/analytics-next'

const { tracking, email, phone } = window.SHOP
const trackingHost = new URL(tracking).host

async function runPosthog() {
  const loaded = new Promise((resolve) => {
    posthog.init('phc_BROWSERTESTPROJECTTOKEN000000000000000000', {
      api_host: `${tracking}/ingest`,
      ui_host: 'https://us.posthog.com',
      person_profiles: 'identified_only',
      autocapture: false,
      capture_pageview: true,
      capture_pageleave: false,
      disable_session_recording: true,
      disable_surveys: true,
      capture_performance: false,
      capture_dead_clicks: false,
      capture_heatmaps: false,
      capture_exceptions: false,
      disable_external_dependency_loading: true,
      request_batching: true,
      request_queue_config: { flush_interval_ms: 200 },
      loaded: resolve,
    })
  })
  await loaded
  // An email as the user id, and as person properties.
  posthog.identify(email, { email, phone, name: 'Jane Doe' })
  posthog.capture('checkout completed', {
    email,
    phone,
    plan: 'pro',
    note: `call me at ${phone} or write to ${email}`,
  })
  posthog.capture('flushed', { plan: 'pro' }, { send_instantly: true })
  return 'posthog'
}

function runPlausible() {
  const { trackPageview, trackEvent } = Plausible({
    domain: 'shop.example',
    apiHost: tracking,
    trackLocalhost: true,
  })
  const sent = (fn) => new Promise((resolve) => fn(resolve))
  return Promise.all([
    sent((callback) => trackPageview({}, { callback })),
    sent((callback) =>
      trackEvent('Signup', { callback, props: { email, phone, plan: 'pro' } }),
    ),
  ]).then(() => 'plausible')
}

async function runSegment() {
  const [analytics] = await AnalyticsBrowser.load(
    { writeKey: 'BROWSERTESTWRITEKEY0', cdnURL: tracking },
    {
      integrations: {
        'Segment.io': { apiHost: `${trackingHost}/v1`, protocol: 'https' },
      },
    },
  )
  await analytics.page()
  await analytics.identify(email, { email, phone, name: 'Jane Doe' })
  await analytics.track('Order Completed', {
    order_id: '1001',
    revenue: 20,
    email,
    phone,
    note: `call me at ${phone}`,
  })
  return 'segment'
}

const settle = (p) => p.then((v) => ({ ok: v }), (e) => ({ error: String(e && e.stack || e) }))
window.tagwayDone = Promise.all([settle(runPosthog()), settle(runPlausible()), settle(runSegment())])
