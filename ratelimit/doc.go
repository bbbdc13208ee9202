// Package ratelimit will hold the throttle handler (http.handlers.throttle):
// per-client GCRA rate limiting. It registers no module yet.
package ratelimit
