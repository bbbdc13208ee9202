package jwtauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// alg is one JWS algorithm this module verifies. "none" is deliberately not
// one of them.
type alg uint8

const (
	algHS256 alg = iota
	algHS384
	algHS512
	algRS256
	algRS384
	algRS512
	algPS256
	algPS384
	algPS512
	algES256
	algES384
	algES512
	algEdDSA
	// algEd25519 is RFC 9864's fully-specified name for EdDSA over Ed25519.
	algEd25519
	numAlgs
)

var algNames = [numAlgs]string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA", "Ed25519",
}

var algMethods = [numAlgs]jwt.SigningMethod{
	jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512,
	jwt.SigningMethodRS256, jwt.SigningMethodRS384, jwt.SigningMethodRS512,
	jwt.SigningMethodPS256, jwt.SigningMethodPS384, jwt.SigningMethodPS512,
	jwt.SigningMethodES256, jwt.SigningMethodES384, jwt.SigningMethodES512,
	jwt.SigningMethodEdDSA, jwt.SigningMethodEdDSA,
}

// parseAlg maps an exact, case-sensitive JWS alg name (RFC 7518) to an alg.
// "none", in any casing, is not an algorithm here.
func parseAlg(name string) (alg, bool) {
	for i, n := range algNames {
		if n == name {
			return alg(i), true
		}
	}
	return 0, false
}

func (a alg) String() string { return algNames[a] }

// algSet is a set of algorithms, one bit each.
type algSet uint16

const (
	hmacAlgs  = algSet(1<<algHS256 | 1<<algHS384 | 1<<algHS512)
	rsaAlgs   = algSet(1<<algRS256 | 1<<algRS384 | 1<<algRS512 | 1<<algPS256 | 1<<algPS384 | 1<<algPS512)
	edAlgs    = algSet(1<<algEdDSA | 1<<algEd25519)
	allAlgSet = algSet(1<<numAlgs - 1)
)

func (s algSet) has(a alg) bool { return s&(1<<a) != 0 }

func (s algSet) String() string {
	names := make([]string, 0, bits.OnesCount16(uint16(s)))
	for a := range numAlgs {
		if s.has(a) {
			names = append(names, a.String())
		}
	}
	return strings.Join(names, " ")
}

// parseAlgSet parses an `algorithms` allowlist. An empty list allows every
// algorithm (keys are still pinned to what their type implies).
func parseAlgSet(names []string) (algSet, error) {
	if len(names) == 0 {
		return allAlgSet, nil
	}
	var s algSet
	for _, n := range names {
		a, ok := parseAlg(n)
		if !ok {
			return 0, fmt.Errorf("unsupported algorithm %q (supported: %s)", n, allAlgSet)
		}
		s |= 1 << a
	}
	return s, nil
}

// hmacMinLen is the shortest secret accepted for an HMAC algorithm: the
// size of its hash (RFC 7518 §3.2).
func hmacMinLen(a alg) int {
	if a == algHS384 {
		return 48
	}
	if a == algHS512 {
		return 64
	}
	return 32
}

// minRSABits is the smallest RSA modulus accepted (RFC 7518 §3.3).
const minRSABits = 2048

// verificationKey is one key with the algorithms it is pinned to.
type verificationKey struct {
	// kid is the key's JWK "kid", empty for keys configured without one.
	kid string
	// algs are the only algorithms a token verified by this key may use.
	algs algSet
	// key is []byte (HMAC), *rsa.PublicKey, *ecdsa.PublicKey or
	// ed25519.PublicKey: the type golang-jwt's method for algs expects.
	key any
}

// pinKey returns the algorithms a key may verify: those its type and size
// imply (jwkAlg, the JWK "alg", when set), narrowed by allowed. It refuses
// weak keys and keys left with no algorithm.
func pinKey(key any, jwkAlg string, allowed algSet) (algSet, error) {
	var implied algSet
	switch k := key.(type) {
	case []byte:
		if len(k) < hmacMinLen(algHS256) {
			return 0, fmt.Errorf("HMAC secret is %d bytes; at least 32 are required (the size of the HS256 hash)", len(k))
		}
		for _, a := range []alg{algHS256, algHS384, algHS512} {
			if len(k) >= hmacMinLen(a) {
				implied |= 1 << a
			} else if allowed != allAlgSet && allowed.has(a) && jwkAlg == "" {
				return 0, fmt.Errorf("HMAC secret is %d bytes; %s requires at least %d", len(k), a, hmacMinLen(a))
			}
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return 0, fmt.Errorf("RSA key is %d bits; at least %d are required", n, minRSABits)
		}
		implied = rsaAlgs
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			implied = 1 << algES256
		case elliptic.P384():
			implied = 1 << algES384
		case elliptic.P521():
			implied = 1 << algES512
		default:
			return 0, errors.New("unsupported elliptic curve (P-256, P-384 and P-521 are supported)")
		}
	case ed25519.PublicKey:
		implied = edAlgs
	default:
		return 0, fmt.Errorf("unsupported key type %T", key)
	}
	if jwkAlg != "" {
		a, ok := parseAlg(jwkAlg)
		if !ok {
			return 0, fmt.Errorf("unsupported JWK alg %q", jwkAlg)
		}
		if !implied.has(a) {
			if b, isSecret := key.([]byte); isSecret && a >= algHS256 && a <= algHS512 {
				return 0, fmt.Errorf("HMAC secret is %d bytes; %s requires at least %d", len(b), a, hmacMinLen(a))
			}
			return 0, fmt.Errorf("JWK alg %s does not fit the key type", a)
		}
		implied = 1 << a
		if a == algEdDSA || a == algEd25519 {
			// On an Ed25519 key both names denote the one algorithm
			// (RFC 9864 §2): a key labelled with either verifies both.
			implied = edAlgs
		}
	}
	pinned := implied & allowed
	if pinned == 0 {
		return 0, fmt.Errorf("the key allows %s, none of which is in algorithms", implied)
	}
	return pinned, nil
}

// loadPEMKeys reads every public key in a PEM file: SPKI ("PUBLIC KEY"),
// PKCS#1 ("RSA PUBLIC KEY") or X.509 certificates. Private keys are refused so
// that a secret never sits where a public key is expected.
func loadPEMKeys(filename string) ([]any, error) {
	data, err := os.ReadFile(filename)
	if err != nil {
		return nil, err
	}
	var keys []any
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			cert, err = x509.ParseCertificate(block.Bytes)
			if err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("%s: holds a private key; give the public key", filename)
			}
			return nil, fmt.Errorf("%s: unsupported PEM block %q", filename, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: parsing %s: %w", filename, block.Type, err)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no PEM public key found", filename)
	}
	return keys, nil
}

// staticKeys loads the keys configured inline or from PEM files, each pinned
// to its algorithms.
func staticKeys(secret string, pemFiles []string, allowed algSet) ([]verificationKey, error) {
	var keys []verificationKey
	if secret != "" {
		algs, err := pinKey([]byte(secret), "", allowed)
		if err != nil {
			return nil, fmt.Errorf("secret: %w", err)
		}
		keys = append(keys, verificationKey{algs: algs, key: []byte(secret)})
	}
	for _, f := range pemFiles {
		pubs, err := loadPEMKeys(f)
		if err != nil {
			return nil, fmt.Errorf("public_key: %w", err)
		}
		for _, pub := range pubs {
			algs, err := pinKey(pub, "", allowed)
			if err != nil {
				return nil, fmt.Errorf("public_key %s: %w", f, err)
			}
			keys = append(keys, verificationKey{algs: algs, key: pub})
		}
	}
	return keys, nil
}
