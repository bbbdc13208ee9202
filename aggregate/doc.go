// Package aggregate will hold the aggregate handler (http.handlers.aggregate):
// concurrent fan-out to several backends merged into one JSON envelope. It
// registers no module yet.
package aggregate
