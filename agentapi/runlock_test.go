package agentapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// The conversation as both sides speak it: the holder, the reply, then
// pings and the release.
func TestRunLockConversation(t *testing.T) {
	var toAgent bytes.Buffer
	run := &RunHolder{Run: "r1", Operator: "ops", Command: "deploy", Hosts: []string{"a"}, Started: time.Unix(1, 0).UTC()}
	if err := WriteRunHolder(&toAgent, run); err != nil {
		t.Fatal(err)
	}
	toAgent.WriteString(LockPing + "\n\n" + LockRelease + "\n")
	in := bufio.NewReader(&toAgent)
	got, err := ReadRunHolder(in)
	if err != nil || got.Run != "r1" || got.Operator != "ops" || !got.Started.Equal(run.Started) {
		t.Fatalf("ReadRunHolder = %+v, %v", got, err)
	}
	var lines []string
	for {
		l, err := ReadLockRequest(in)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if strings.Join(lines, ",") != "ping,,release" {
		t.Errorf("requests %q, want ping, a keepalive, release", lines)
	}

	var toRun bytes.Buffer
	if err := WriteLockReply(&toRun, &LockReply{Locked: false, Holder: run}); err != nil {
		t.Fatal(err)
	}
	reply, err := ReadLockReply(bufio.NewReader(&toRun))
	if err != nil || reply.Locked || reply.Holder.Run != "r1" || reply.V != Version {
		t.Fatalf("ReadLockReply = %+v, %v", reply, err)
	}
}

func TestRunLockRefusals(t *testing.T) {
	if _, err := ReadRunHolder(bufio.NewReader(strings.NewReader("{}\n"))); err == nil {
		t.Error("a holder without a run id was accepted")
	}
	if _, err := ReadRunHolder(bufio.NewReader(strings.NewReader(""))); err == nil {
		t.Error("no holder was accepted")
	}
	_, err := ReadLockReply(bufio.NewReader(strings.NewReader(`{"v":99,"locked":true}` + "\n")))
	var ve *VersionError
	if !errors.As(err, &ve) {
		t.Errorf("a reply of version 99: %v, want a *VersionError", err)
	}
	long := strings.Repeat("x", maxLine+10) + "\n"
	if _, err := ReadLockRequest(bufio.NewReader(strings.NewReader(long))); err == nil {
		t.Error("a line beyond the limit was accepted")
	}
}
