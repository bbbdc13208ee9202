// Package jwtauth holds the jwt_auth handler (http.handlers.jwt_auth).
package jwtauth
