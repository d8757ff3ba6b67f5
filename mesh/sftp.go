package mesh

import (
	"context"
	"fmt"
	"io"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// sftpServerScript finds and runs the OpenSSH sftp-server, for sudo.
const sftpServerScript = `for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server; do [ -x "$p" ] && exec "$p"; done; p=$(command -v sftp-server) && exec "$p"; echo "sftp-server not found" >&2; exit 127`

// SFTP opens an SFTP client in a new session. Without sudo it uses the
// server's "sftp" subsystem. With Target.Sudo it runs the OpenSSH
// sftp-server binary (/usr/lib/openssh/sftp-server or the first of the
// usual places, else sftp-server from PATH) through sudo, so files are read
// and written as root. ctx bounds the setup only; close the returned client
// to end the session.
func (cl *Client) SFTP(ctx context.Context) (*sftp.Client, error) {
	if cl.target.Sudo {
		return cl.sudoSFTP(ctx)
	}
	var s *ssh.Session
	err := cl.await(ctx, "open session", func() error {
		ss, err := cl.ssh.NewSession()
		if err == nil {
			s = ss
		}
		return err
	}, func() {
		if s != nil {
			s.Close()
		}
	})
	if err != nil {
		return nil, err
	}
	cl.cfg.Counts.add(countKey(cl.target), 0, 1)
	stdin, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sftp on %q: %w", cl.name, err)
	}
	stdout, err := s.StdoutPipe()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sftp on %q: %w", cl.name, err)
	}
	if err := cl.await(ctx, "start sftp subsystem", func() error { return s.RequestSubsystem("sftp") }, func() { s.Close() }); err != nil {
		s.Close()
		return nil, err
	}
	return cl.sftpHandshake(ctx, &connReader{r: stdout, cl: cl}, &closeBoth{WriteCloser: stdin, also: s})
}

func (cl *Client) sudoSFTP(ctx context.Context) (*sftp.Client, error) {
	sess, err := cl.start(ctx, []string{"sh", "-c", sftpServerScript}, nil, false)
	if err != nil {
		return nil, err
	}
	return cl.sftpHandshake(ctx, sess.Stdout, &closeBoth{WriteCloser: sess.Stdin, also: sess})
}

// sftpHandshake runs the SFTP version exchange, bounded like a request.
func (cl *Client) sftpHandshake(ctx context.Context, r io.Reader, w io.WriteCloser) (*sftp.Client, error) {
	var c *sftp.Client
	err := cl.await(ctx, "sftp handshake", func() error {
		var err error
		c, err = sftp.NewClientPipe(r, w)
		return err
	}, func() {
		if c != nil {
			c.Close()
		} else {
			w.Close()
		}
	})
	if err != nil {
		w.Close()
		return nil, err
	}
	return c, nil
}

// closeBoth closes the session along with the SFTP client's pipe.
type closeBoth struct {
	io.WriteCloser
	also io.Closer
}

func (c *closeBoth) Close() error {
	err := c.WriteCloser.Close()
	c.also.Close()
	return err
}
