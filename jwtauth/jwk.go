package jwtauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// jwk is one JSON Web Key (RFC 7517), the members this module reads.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Alg    string   `json:"alg"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Crv    string   `json:"crv"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	K      string   `json:"k"`
	D      string   `json:"d"`
}

// parseJWKS parses a JWK Set. Keys that are weak, not for signatures,
// private, symmetric (unless allowSymmetric: only local files may hold
// secrets) or of an unsupported type are skipped, each with a reason. Each
// key is pinned to its JWK alg, else to what its type and curve imply.
func parseJWKS(data []byte, allowSymmetric bool) ([]verificationKey, []string, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`not a JWK Set: no "keys" array`)
	}
	var keys []verificationKey
	var skipped []string
	for i, raw := range set.Keys {
		if len(keys) == jwksMaxKeys {
			skipped = append(skipped, fmt.Sprintf("keys after the first %d ignored", jwksMaxKeys))
			break
		}
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		vk, err := k.verificationKey(allowSymmetric)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		}
		keys = append(keys, vk)
	}
	return keys, skipped, nil
}

func (k *jwk) verificationKey(allowSymmetric bool) (verificationKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return verificationKey{}, fmt.Errorf("use %q is not sig", k.Use)
	}
	if k.KeyOps != nil && !contains(k.KeyOps, "verify") {
		return verificationKey{}, errors.New("key_ops lacks verify")
	}
	if k.D != "" {
		return verificationKey{}, errors.New("private key material published")
	}
	var pub any
	switch k.Kty {
	case "RSA":
		n, err1 := b64int(k.N)
		e, err2 := b64int(k.E)
		if err1 != nil || err2 != nil || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return verificationKey{}, errors.New("bad RSA n or e")
		}
		pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
	case "EC":
		var curve elliptic.Curve
		switch k.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return verificationKey{}, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		x, err1 := b64int(k.X)
		y, err2 := b64int(k.Y)
		if err1 != nil || err2 != nil {
			return verificationKey{}, errors.New("bad EC x or y")
		}
		size := (curve.Params().BitSize + 7) / 8
		point := make([]byte, 1+2*size)
		point[0] = 4
		if len(x.Bytes()) > size || len(y.Bytes()) > size {
			return verificationKey{}, errors.New("bad EC x or y")
		}
		x.FillBytes(point[1 : 1+size])
		y.FillBytes(point[1+size:])
		ecKey, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return verificationKey{}, errors.New("EC point not on the curve")
		}
		pub = ecKey
	case "OKP":
		if k.Crv != "Ed25519" {
			return verificationKey{}, fmt.Errorf("unsupported OKP curve %q", k.Crv)
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return verificationKey{}, errors.New("bad Ed25519 x")
		}
		pub = ed25519.PublicKey(x)
	case "oct":
		if !allowSymmetric {
			return verificationKey{}, errors.New("symmetric key in a remote set")
		}
		secret, err := base64.RawURLEncoding.DecodeString(k.K)
		if err != nil {
			return verificationKey{}, errors.New("bad oct k")
		}
		pub = secret
	default:
		return verificationKey{}, fmt.Errorf("unsupported kty %q", k.Kty)
	}
	algs, err := pinKey(pub, k.Alg, allAlgSet)
	if err != nil {
		return verificationKey{}, err
	}
	return verificationKey{kid: k.Kid, algs: algs, key: pub}, nil
}

func b64int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("bad base64url integer")
	}
	return new(big.Int).SetBytes(b), nil
}

// loadJWKSFile reads a local JWK Set (which may hold oct secrets).
func loadJWKSFile(filename string) ([]verificationKey, []string, error) {
	data, err := os.ReadFile(filename)
	if err != nil {
		return nil, nil, err
	}
	keys, skipped, err := parseJWKS(data, true)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filename, err)
	}
	if len(keys) == 0 {
		return nil, skipped, fmt.Errorf("%s: no usable key (%s)", filename, strings.Join(skipped, "; "))
	}
	return keys, skipped, nil
}
