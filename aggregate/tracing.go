package aggregate

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the backend call spans.
const tracerName = "github.com/caddygateway/caddy-gateway/aggregate"

// traceContext is the W3C Trace Context propagator: backend requests carry
// traceparent and tracestate.
var traceContext propagation.TraceContext

// traceHeaders are the W3C Trace Context headers, canonical.
var traceHeaders = [...]string{"Traceparent", "Tracestate"}

// requestTracer returns the tracer for the backend calls of a request whose
// context holds a span (Caddy's `tracing` handler put it there), or nil.
// The tracer comes from that span's provider: the one Caddy's tracing
// configured, with its exporter; aggregate adds none.
func requestTracer(ctx context.Context) trace.Tracer {
	span := trace.SpanFromContext(ctx)
	if !span.SpanContext().IsValid() {
		return nil
	}
	return span.TracerProvider().Tracer(tracerName)
}

// copyTraceHeaders copies the client's W3C trace context headers, unchanged,
// into a backend request's headers: without tracing, a tracing service
// behind the gateway still sees one trace.
func copyTraceHeaders(dst, src http.Header) {
	for _, name := range traceHeaders {
		if v, ok := src[name]; ok {
			dst[name] = v
		}
	}
}

// startSpan starts the child span of one backend call and writes its trace
// context into the call's headers (replacing any traceparent/tracestate
// already there).
func startSpan(ctx context.Context, tracer trace.Tracer, b *Backend, hdr http.Header) (context.Context, trace.Span) {
	ctx, span := tracer.Start(ctx, b.Name,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("aggregate.backend", b.Name),
			attribute.String("url.template", b.url.shown),
			attribute.String("http.request.method", b.Method),
		))
	for _, name := range traceHeaders {
		delete(hdr, name)
	}
	traceContext.Inject(ctx, propagation.HeaderCarrier(hdr))
	return ctx, span
}

// Attributes of a backend span: a cache answer or a breaker refusal (no
// call made) is visible on it.
var (
	attrCacheHit    = attribute.String("aggregate.cache", "hit")
	attrCacheMiss   = attribute.String("aggregate.cache", "miss")
	attrBreakerOpen = attribute.String("aggregate.breaker", "open")
)

// endSpan records the outcome of a backend call on its span and ends it.
func endSpan(span trace.Span, res *result) {
	if res.code == codeCircuitOpen {
		span.SetAttributes(attrBreakerOpen)
	}
	if res.status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", res.status))
	}
	if res.code == "" {
		span.SetAttributes(attribute.String("aggregate.outcome", "ok"))
	} else {
		span.SetAttributes(attribute.String("aggregate.outcome", res.code))
		span.SetStatus(codes.Error, res.code)
	}
	span.End()
}
