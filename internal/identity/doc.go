// Package identity holds what the authentication handlers (jwt_auth and
// api_key) share about the identity they hand to the rest of a route:
//
//   - claim values as text (claims.go): exact numbers, arrays of scalars
//     joined with ", ", objects as compact JSON, control characters caught;
//   - identity headers (headers.go): deleted from every request in every
//     casing and underscore variant, headers and trailers, then set only
//     from verified values;
//   - the {http.auth.user.*} placeholders (placeholder.go);
//   - where a credential is read from and how it is removed before the
//     request goes on (source.go): headers with an optional scheme prefix,
//     cookies and query parameters, the others kept byte for byte.
package identity
