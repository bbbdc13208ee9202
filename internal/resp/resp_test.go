package resp

import "testing"

func TestCommand(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"PING"}, "*1\r\n$4\r\nPING\r\n"},
		{[]string{"INFO", "commandstats"}, "*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"},
		{[]string{"SET", "k", ""}, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"},
		{[]string{"GET", "a\r\nb"}, "*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n"},
	} {
		if got := string(Command(c.args...)); got != c.want {
			t.Errorf("Command(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}
