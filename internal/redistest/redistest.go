// Package redistest starts real redis-server processes for tests: a single
// server or a 3-master Redis Cluster on free loopback ports, each in a
// temporary directory and stopped when the test ends, with helpers to kill,
// freeze, resume and restart them and to read their command statistics.
//
// Without redis-server on PATH the tests fail, unless run with -short,
// where they are skipped: the README test command installs it.
package redistest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	Port int
	dir  string
	args []string

	tls bool

	mu  sync.Mutex
	cmd *exec.Cmd
}

// need fails the test when the Redis binaries are missing (skips it with
// -short).
func need(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if testing.Short() {
				t.Skipf("%s not installed (-short)", bin)
			}
			t.Fatalf("%s not installed: run scripts/deps.sh (or apt-get install redis-server)", bin)
		}
	}
}

// Start starts a redis-server on a free loopback port; extra are more
// command-line options, e.g. "--requirepass", "secret".
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	need(t)
	var last error
	for range 5 {
		s := &Server{t: t, Port: freePort(t), dir: t.TempDir()}
		s.args = append([]string{
			"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--dir", s.dir,
			"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
			"--loglevel", "warning", "--logfile", filepath.Join(s.dir, "redis.log"),
		}, extra...)
		if last = s.start(); last == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("redis-server did not start: %v", last)
	return nil
}

func (s *Server) start() error {
	cmd := exec.CommandContext(context.Background(), "redis-server", s.args...)
	cmd.Dir = s.dir
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server exited (%w): %s", err, log)
		default:
		}
		c, err := dial(s.Addr(), 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return fmt.Errorf("redis-server on port %d did not listen", s.Port)
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is the server's redis:// (or rediss:// for TLS) URL, without
// credentials.
func (s *Server) URL() string {
	if s.tls {
		return "rediss://" + s.Addr()
	}
	return "redis://" + s.Addr()
}

func (s *Server) process() *os.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	return s.cmd.Process
}

// Kill kills the server (SIGKILL, after resuming it if frozen).
func (s *Server) Kill() {
	if p := s.process(); p != nil {
		_ = p.Signal(syscall.SIGCONT)
		_ = p.Kill()
		for range 100 { // wait until the port is free again
			c, err := dial(s.Addr(), 50*time.Millisecond)
			if err != nil {
				break
			}
			_ = c.Close()
			time.Sleep(20 * time.Millisecond)
		}
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// Freeze stops the server with SIGSTOP: connections stay open, nothing
// answers.
func (s *Server) Freeze() {
	if p := s.process(); p != nil {
		_ = p.Signal(syscall.SIGSTOP)
	}
}

// Resume continues a frozen server (SIGCONT).
func (s *Server) Resume() {
	if p := s.process(); p != nil {
		_ = p.Signal(syscall.SIGCONT)
	}
}

// Restart starts the server again on the same port (empty: no
// persistence), killing it first if it runs.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	var err error
	for range 20 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restart redis-server: %v", err)
}

// Cli runs redis-cli against the server and returns its output.
func (s *Server) Cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port)}
	if s.tls {
		full = append(full, "--tls", "--insecure")
	}
	full = append(full, args...)
	out, err := exec.CommandContext(ctx, "redis-cli", full...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// MustCli runs redis-cli and fails the test on error.
func (s *Server) MustCli(args ...string) string {
	s.t.Helper()
	out, err := s.Cli(args...)
	if err != nil {
		s.t.Fatalf("redis-cli %v: %v: %s", args, err, out)
	}
	return out
}

// ScriptFlush empties the server's script cache.
func (s *Server) ScriptFlush() { s.MustCli("SCRIPT", "FLUSH") }

// CommandCalls returns the calls of command (lower case, e.g. "evalsha")
// from INFO commandstats.
func (s *Server) CommandCalls(command string) int {
	s.t.Helper()
	return commandCalls(s.MustCli("INFO", "commandstats"), command)
}

// ResetStats zeroes INFO commandstats.
func (s *Server) ResetStats() { s.MustCli("CONFIG", "RESETSTAT") }

func commandCalls(info, command string) int {
	sc := bufio.NewScanner(strings.NewReader(info))
	prefix := "cmdstat_" + command + ":calls="
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// freePort returns a loopback port that is free, and whose cluster bus port
// (port + 10000) is free too.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(30000) //nolint:gosec // a port number, not a secret
		if portFree(p) && portFree(p+10000) {
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

func dial(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(context.Background(), "tcp", addr)
}

func portFree(p int) bool {
	l, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// StartTLS starts a redis-server that speaks only TLS, with a self-signed
// certificate for 127.0.0.1 (clients are not asked for certificates).
func StartTLS(t testing.TB) *Server {
	t.Helper()
	need(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSigned(t, cert, key)
	port := freePort(t)
	var last error
	for range 5 {
		s := &Server{t: t, Port: port, dir: t.TempDir(), tls: true}
		s.args = []string{
			"--port", "0", "--tls-port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
			"--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no",
			"--dir", s.dir, "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
			"--logfile", filepath.Join(s.dir, "redis.log"),
		}
		if last = s.start(); last == nil {
			t.Cleanup(s.Kill)
			return s
		}
		port = freePort(t)
	}
	t.Fatalf("redis-server (TLS) did not start: %v", last)
	return nil
}

// writeSelfSigned writes a self-signed certificate and key for 127.0.0.1.
func writeSelfSigned(t testing.TB, certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	writeCertKey(t, certFile, keyFile, der, k)
}

// writeCertKey writes a certificate (DER) and its EC private key as PEM
// files.
func writeCertKey(t testing.TB, certFile, keyFile string, der []byte, k *ecdsa.PrivateKey) {
	t.Helper()
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartSentinel starts a Redis Sentinel monitoring master under the name
// masterSet, and waits until it knows the master.
func StartSentinel(t testing.TB, master *Server, masterSet string) *Server {
	t.Helper()
	need(t)
	var last error
	for range 5 {
		s := &Server{t: t, Port: freePort(t), dir: t.TempDir()}
		conf := filepath.Join(s.dir, "sentinel.conf")
		body := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 5000\n",
			masterSet, master.Port, masterSet)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = []string{
			conf, "--sentinel", "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
			"--dir", s.dir, "--protected-mode", "no", "--daemonize", "no",
			"--logfile", filepath.Join(s.dir, "redis.log"),
		}
		if last = s.start(); last == nil {
			t.Cleanup(s.Kill)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				out, _ := s.Cli("SENTINEL", "get-master-addr-by-name", masterSet)
				if strings.Contains(out, strconv.Itoa(master.Port)) {
					return s
				}
				if time.Now().After(deadline) {
					t.Fatalf("sentinel does not know %s: %s", masterSet, out)
				}
			}
		}
	}
	t.Fatalf("redis sentinel did not start: %v", last)
	return nil
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
	// CA verifies the nodes' certificates (StartTLSCluster only).
	CA *x509.CertPool
}

// StartCluster starts a 3-master Redis Cluster and waits until it serves;
// extra are more options of every node (e.g.
// "--cluster-require-full-coverage", "no").
func StartCluster(t testing.TB, extra ...string) *Cluster {
	t.Helper()
	need(t)
	c := &Cluster{}
	for range 3 {
		args := append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
		}, extra...)
		c.Nodes = append(c.Nodes, Start(t, args...))
	}
	args := make([]string, 0, len(c.Nodes)+5)
	args = append(args, "--cluster", "create")
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	c.create(t, args)
	return c
}

// create runs redis-cli with args (--cluster create …) and waits until
// every node serves.
func (c *Cluster) create(t testing.TB, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v: %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		for {
			info, _ := n.Cli("CLUSTER", "INFO")
			if strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s: not ok: %s", n.Addr(), info)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// URLs are the redis:// URLs of every node (seeds of the cluster).
func (c *Cluster) URLs() []string {
	out := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		out = append(out, n.URL())
	}
	return out
}

// CommandCalls sums the calls of command over every node.
func (c *Cluster) CommandCalls(command string) int {
	n := 0
	for _, s := range c.Nodes {
		n += s.CommandCalls(command)
	}
	return n
}

// CallsPerNode returns the calls of command on each node.
func (c *Cluster) CallsPerNode(command string) []int {
	out := make([]int, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.CommandCalls(command)
	}
	return out
}

// ResetStats zeroes INFO commandstats on every node.
func (c *Cluster) ResetStats() {
	for _, s := range c.Nodes {
		s.ResetStats()
	}
}

// Pipe sends many commands to the server through one redis-cli (reading
// them from its standard input) and returns one line of output per
// command; arguments must hold no space or quote.
func (s *Server) Pipe(commands [][]string) []string {
	s.t.Helper()
	var in strings.Builder
	for _, c := range commands {
		in.WriteString(strings.Join(c, " "))
		in.WriteByte('\n')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port)}
	if s.tls {
		full = append(full, "--tls", "--insecure")
	}
	cmd := exec.CommandContext(ctx, "redis-cli", full...)
	cmd.Stdin = strings.NewReader(in.String())
	out, err := cmd.Output()
	if err != nil {
		s.t.Fatalf("redis-cli (%d commands): %v", len(commands), err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != len(commands) {
		s.t.Fatalf("redis-cli: %d lines for %d commands", len(lines), len(commands))
	}
	return lines
}

// Slots returns the Cluster slot of each key, as the server computes it
// (CLUSTER KEYSLOT; the server must run in cluster mode).
func (s *Server) Slots(keys []string) []int {
	s.t.Helper()
	cmds := make([][]string, len(keys))
	for i, k := range keys {
		cmds[i] = []string{"CLUSTER", "KEYSLOT", k}
	}
	out := make([]int, len(keys))
	for i, line := range s.Pipe(cmds) {
		n, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			s.t.Fatalf("CLUSTER KEYSLOT %s: %q", keys[i], line)
		}
		out[i] = n
	}
	return out
}

// Keys returns the keys matching pattern on every node.
func (c *Cluster) Keys(pattern string) []string {
	out := make([]string, 0, 64)
	for _, s := range c.Nodes {
		out = append(out, strings.Fields(s.MustCli("--scan", "--pattern", pattern))...)
	}
	return out
}

// StartTLSCluster starts a 3-master Redis Cluster that speaks only TLS,
// clients and cluster bus alike, each node with a certificate of its own
// signed by a test CA (c.CA): the first node's names `localhost` and
// 127.0.0.1, the others' only 127.0.0.1, as nodes announcing their
// addresses have.
func StartTLSCluster(t testing.TB) *Cluster {
	t.Helper()
	need(t)
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{CA: x509.NewCertPool()}
	c.CA.AddCert(ca.cert)
	for i := range 3 {
		var dns []string
		if i == 0 {
			dns = []string{"localhost"}
		}
		cert, key := filepath.Join(dir, fmt.Sprintf("node%d.pem", i)), filepath.Join(dir, fmt.Sprintf("node%d-key.pem", i))
		ca.issue(t, cert, key, dns)
		var s *Server
		var last error
		for range 5 {
			s = &Server{t: t, Port: freePort(t), dir: t.TempDir(), tls: true}
			s.args = []string{
				"--port", "0", "--tls-port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
				"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", caFile,
				"--tls-auth-clients", "no", "--tls-cluster", "yes", "--tls-replication", "yes",
				"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
				"--dir", s.dir, "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
				"--loglevel", "warning", "--logfile", filepath.Join(s.dir, "redis.log"),
			}
			if last = s.start(); last == nil {
				break
			}
			s = nil
		}
		if s == nil {
			t.Fatalf("redis-server (TLS cluster node) did not start: %v", last)
		}
		t.Cleanup(s.Kill)
		c.Nodes = append(c.Nodes, s)
	}
	args := make([]string, 0, len(c.Nodes)+8)
	args = append(args, "--tls", "--cacert", caFile, "--cluster", "create")
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	c.create(t, args)
	return c
}

// testCA is a certificate authority for tests.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{key: k, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1 and the dns names, good for
// server and client use (cluster bus), and its key.
func (ca *testCA) issue(t testing.TB, certFile, keyFile string, dns []string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := crand.Int(crand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "redis node"},
		DNSNames:     dns,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	writeCertKey(t, certFile, keyFile, der, k)
}
