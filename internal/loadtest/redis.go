package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/resp"
)

// redisServer is a redis-server started on a free loopback port, also
// listening on a Unix socket.
type redisServer struct {
	addr string
	sock string // path of its Unix socket
	cmd  *exec.Cmd
}

func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("not installed (scripts/deps.sh installs it)")
	}
	addr := freeAddr()
	_, port, _ := net.SplitHostPort(addr)
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.CommandContext(ctx, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--unixsocket", sock, "--unixsocketperm", "700")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisServer{addr: addr, sock: sock, cmd: cmd}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := r.command("PING"); err == nil {
			return r, nil
		}
	}
	r.stop()
	return nil, errors.New("did not answer PING")
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// scriptCalls is the number of EVALSHA and EVAL calls Redis has served.
func (r *redisServer) scriptCalls() (int64, error) {
	info, err := r.command("INFO", "commandstats")
	if err != nil {
		return 0, err
	}
	var total int64
	for line := range strings.SplitSeq(info, "\r\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for field := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, err
				}
				total += n
			}
		}
	}
	return total, nil
}

// command sends one command in RESP and returns a simple or bulk string
// reply.
func (r *redisServer) command(args ...string) (string, error) {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(context.Background(), "tcp", r.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write(resp.Command(args...)); err != nil {
		return "", err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 1<<20 {
			return "", fmt.Errorf("bad bulk length %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: %s", line)
}
