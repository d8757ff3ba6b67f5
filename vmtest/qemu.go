package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/declarative/deploy/internal/testenv"
)

// The qemu host: the heavy mode for power-loss tests. A systemd-nspawn
// host shares the machine's page cache, so its crash loses no write the
// kernel accepted; a qemu guest has its own kernel and page cache, and a
// reset (QMP system_reset) loses everything the guest had not yet written
// to its disk, which is a file on the machine. What the guest had written
// to that file survives, as on a disk whose write cache does not lose
// acknowledged writes.

// QEMUPackages are the Debian packages the qemu host needs on the machine
// that runs the tests (besides debootstrap, for the image).
var QEMUPackages = []string{"qemu-system-x86", "e2fsprogs"}

// EnvQEMU, when "1", enables the qemu tests (they are long: a boot takes
// about 20 s under TCG); `make test-powerloss` sets it.
const EnvQEMU = "DEPLOY_QEMU"

// The qemu image recipe (on top of the nspawn image's packages).
const qemuRevision = "1"

var qemuExtraPackages = []string{"linux-image-amd64"}

// qemuFiles are written into the qemu image besides imageFiles.
var qemuFiles = map[string]string{
	"etc/vmtest/network.env": "ADDRESS=10.0.2.15/24\n",
	"etc/hostname":           "q1\n",
	"etc/hosts":              "127.0.0.1 localhost\n127.0.1.1 q1\n",
	"etc/fstab":              "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
}

// QEMUHost is a test host in a qemu virtual machine (TCG by default; set
// DEPLOY_QEMU_ACCEL=kvm where KVM runs Debian's kernel) with one disk, a
// raw file, and sshd reachable on a loopback port of the test machine.
type QEMUHost struct {
	tb      testing.TB
	dir     string
	port    int
	hostKey ssh.PublicKey
	client  keyPair
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartQEMU boots a qemu host from a fresh copy of the cached qemu image
// (built once per machine with debootstrap, about 2 minutes) and waits
// until root can log in over SSH. The test is skipped unless $DEPLOY_QEMU
// is 1 (or, with it, fails when something is missing). The host is
// stopped when tb ends.
func StartQEMU(tb testing.TB) *QEMUHost {
	tb.Helper()
	if os.Getenv(EnvQEMU) != "1" {
		tb.Skipf("skipping: the qemu power-loss tests run with %s=1 (make test-powerloss)", EnvQEMU)
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range []struct{ name, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"mke2fs", "e2fsprogs"}, {"debootstrap", "debootstrap"}} {
		if _, err := exec.LookPath(p.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", p.name, p.pkg))
		}
	}
	if len(missing) > 0 {
		testenv.Missing(tb, "the qemu host needs "+strings.Join(missing, ", "))
	}
	cache := os.Getenv("DEPLOY_VMTEST_CACHE")
	if cache == "" {
		cache = DefaultCacheDir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	img, err := ensureQEMUImage(ctx, cache, tb.Logf)
	if err != nil {
		tb.Fatalf("vmtest: %v", err)
	}
	q := &QEMUHost{tb: tb, dir: tb.TempDir()}
	if q.hostKey, q.client, err = img.keys(); err != nil {
		tb.Fatalf("vmtest: %v", err)
	}
	disk := filepath.Join(q.dir, "disk.raw")
	if out, err := exec.Command("cp", "--sparse=always", img.disk, disk).CombinedOutput(); err != nil {
		tb.Fatalf("vmtest: copy the qemu disk: %v: %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	q.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	accel := os.Getenv("DEPLOY_QEMU_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	q.cmd = exec.Command("qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
		"-accel", accel, "-m", "1024", "-smp", "1",
		"-kernel", img.kernel, "-initrd", img.initrd,
		"-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=1 systemd.show_status=0",
		"-drive", "file="+disk+",format=raw,if=virtio,cache=writeback",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22", q.port),
		"-device", "virtio-net-pci,netdev=n0",
		"-serial", "file:"+q.consolePath(),
		"-qmp", "unix:"+q.qmpPath()+",server=on,wait=off")
	var stderr bytes.Buffer
	q.cmd.Stdout, q.cmd.Stderr = &stderr, &stderr
	if err := q.cmd.Start(); err != nil {
		tb.Fatalf("vmtest: start qemu: %v", err)
	}
	q.done = make(chan struct{})
	go func() { q.cmd.Wait(); close(q.done) }()
	tb.Cleanup(func() {
		q.cmd.Process.Kill()
		<-q.done
		if tb.Failed() {
			tb.Logf("vmtest: qemu host console (last lines):\n%s", tailFile(q.consolePath(), 60))
		}
	})
	start := time.Now()
	if err := q.waitUp(ctx, ""); err != nil {
		tb.Fatalf("vmtest: qemu host: %v\n%s\n%s", err, stderr.String(), tailFile(q.consolePath(), 40))
	}
	tb.Logf("vmtest: qemu host up in %v (accel %s, ssh on 127.0.0.1:%d)", time.Since(start).Round(100*time.Millisecond), accel, q.port)
	return q
}

func (q *QEMUHost) consolePath() string { return filepath.Join(q.dir, "console.log") }
func (q *QEMUHost) qmpPath() string     { return filepath.Join(q.dir, "qmp.sock") }

// Address and Port are where the host's sshd listens (a loopback port of
// this machine, forwarded by qemu).
func (q *QEMUHost) Address() string { return "127.0.0.1" }

// Port is the forwarded SSH port.
func (q *QEMUHost) Port() int { return q.port }

// HostKeyLine is the host's ed25519 key in authorized_keys format.
func (q *QEMUHost) HostKeyLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(q.hostKey)))
}

// ClientKeyPEM is the private key root accepts, in OpenSSH format.
func (q *QEMUHost) ClientKeyPEM() []byte { return q.client.privatePEM }

// SSH connects as root with the pinned host key.
func (q *QEMUHost) SSH(ctx context.Context) (*ssh.Client, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(q.port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(q.client.signer)}, HostKeyCallback: ssh.FixedHostKey(q.hostKey),
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519}})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if !stop() {
		c.Close()
		return nil, ctx.Err()
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// Run runs a shell script as root over SSH and returns its output
// (stdout and stderr).
func (q *QEMUHost) Run(ctx context.Context, script string) (string, error) {
	c, err := q.SSH(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	out, err := s.CombinedOutput(script)
	return string(out), err
}

// Succeed runs script and fails the test if it fails.
func (q *QEMUHost) Succeed(script string) string {
	q.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := q.Run(ctx, script)
	if err != nil {
		q.tb.Fatalf("vmtest: qemu host: %q: %v\n%s", script, err, out)
	}
	return out
}

// bootID returns the guest's boot id, "" if it cannot be read.
func (q *QEMUHost) bootID(ctx context.Context) string {
	out, err := q.Run(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// Reset resets the guest at once (QMP system_reset), as a power cut would:
// nothing is flushed. It returns without waiting; see [QEMUHost.WaitBoot].
func (q *QEMUHost) Reset() {
	q.tb.Helper()
	if err := q.qmp("system_reset"); err != nil {
		q.tb.Fatalf("vmtest: qemu host: reset: %v", err)
	}
}

// WaitBoot waits until the guest runs a boot other than oldBootID and has
// finished booting (systemctl is-system-running --wait).
func (q *QEMUHost) WaitBoot(oldBootID string) {
	q.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := q.waitUp(ctx, oldBootID); err != nil {
		q.tb.Fatalf("vmtest: qemu host did not come back: %v\n%s", err, tailFile(q.consolePath(), 40))
	}
}

// BootID is the guest's current boot id.
func (q *QEMUHost) BootID() string {
	q.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := q.bootID(ctx)
	if id == "" {
		q.tb.Fatal("vmtest: qemu host: no boot id")
	}
	return id
}

func (q *QEMUHost) waitUp(ctx context.Context, oldBootID string) error {
	for {
		select {
		case <-q.done:
			return errors.New("qemu exited")
		default:
		}
		actx, cancel := context.WithTimeout(ctx, 20*time.Second)
		id := q.bootID(actx)
		cancel()
		if id != "" && id != oldBootID {
			actx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			out, err := q.Run(actx, "systemctl is-system-running --wait")
			cancel()
			if st := strings.TrimSpace(out); err == nil || st == "degraded" {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(time.Second)
	}
}

// qmp runs one QMP command.
func (q *QEMUHost) qmp(command string) error {
	c, err := net.DialTimeout("unix", q.qmpPath(), 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	read := func() (map[string]json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				return nil, err
			}
			if _, ev := m["event"]; !ev {
				return m, nil
			}
		}
	}
	if _, err := read(); err != nil { // the greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return err
		}
		m, err := read()
		if err != nil {
			return err
		}
		if e, ok := m["error"]; ok {
			return fmt.Errorf("qmp %s: %s", cmd, e)
		}
	}
	return nil
}

// qemuImage is the cached image: a kernel, its initramfs and a raw ext4
// disk with the root file system, plus the keys baked into it.
type qemuImage struct {
	dir, kernel, initrd, disk string
}

func (img qemuImage) keys() (ssh.PublicKey, keyPair, error) {
	hostPub, err := os.ReadFile(filepath.Join(img.dir, "host_key.pub"))
	if err != nil {
		return nil, keyPair{}, err
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey(hostPub)
	if err != nil {
		return nil, keyPair{}, err
	}
	pemData, err := os.ReadFile(filepath.Join(img.dir, "client_key"))
	if err != nil {
		return nil, keyPair{}, err
	}
	signer, err := ssh.ParsePrivateKey(pemData)
	if err != nil {
		return nil, keyPair{}, err
	}
	return hk, keyPair{signer: signer, privatePEM: pemData}, nil
}

func qemuImageKey() string {
	return "qemu-" + strings.TrimPrefix(imageKey(), imageSuite+"-") + "-" + qemuRevision + "-" + strings.Join(qemuExtraPackages, "+")
}

// ensureQEMUImage returns the cached qemu image, building it first if
// needed (under an flock, renamed into place when complete; only a build
// looks for the [Mirror]).
func ensureQEMUImage(ctx context.Context, cache string, logf func(string, ...any)) (qemuImage, error) {
	images := filepath.Join(cache, "images")
	final := filepath.Join(images, qemuImageKey())
	img := qemuImage{dir: final, kernel: filepath.Join(final, "vmlinuz"), initrd: filepath.Join(final, "initrd.img"), disk: filepath.Join(final, "disk.raw")}
	if _, err := os.Stat(img.disk); err == nil {
		return img, nil
	}
	if err := os.MkdirAll(images, 0o755); err != nil {
		return img, err
	}
	lock, err := lockFile(ctx, final+".lock", logf)
	if err != nil {
		return img, err
	}
	defer lock.Close()
	if _, err := os.Stat(img.disk); err == nil {
		return img, nil
	}
	mirror, err := Mirror()
	if err != nil {
		return img, fmt.Errorf("build qemu image: %w", err)
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return img, err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return img, err
	}
	start := time.Now()
	logf("vmtest: building the qemu image %s with debootstrap from %s (once per machine)", filepath.Base(final), mirror)
	root := filepath.Join(tmp, "rootfs")
	if err := debootstrap(ctx, root, mirror, final+".log", append(append([]string{}, imagePackages...), qemuExtraPackages...)); err != nil {
		return img, err
	}
	if err := customizeImage(root); err != nil {
		return img, fmt.Errorf("build qemu image: %w", err)
	}
	// The qemu host is one machine with its own keys, baked in: the image
	// is private to this machine's cache (mode 0700).
	host, err := newKeyPair("vmtest qemu host")
	if err != nil {
		return img, err
	}
	client, err := newKeyPair("vmtest qemu client")
	if err != nil {
		return img, err
	}
	files := map[string]string{
		"etc/ssh/ssh_host_ed25519_key":     string(host.privatePEM),
		"etc/ssh/ssh_host_ed25519_key.pub": host.authorizedLine() + "\n",
		"root/.ssh/authorized_keys":        client.authorizedLine() + "\n",
		"etc/machine-id":                   fmt.Sprintf("%032x\n", time.Now().UnixNano()),
	}
	for k, v := range qemuFiles {
		files[k] = v
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		os.Remove(p)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return img, err
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return img, err
		}
	}
	for _, f := range []string{"etc/hostname", "etc/hosts", "etc/fstab", "etc/machine-id", "etc/ssh/ssh_host_ed25519_key.pub", "etc/vmtest/network.env"} {
		os.Chmod(filepath.Join(root, f), 0o644)
	}
	if err := os.WriteFile(filepath.Join(tmp, "host_key.pub"), []byte(host.authorizedLine()+"\n"), 0o644); err != nil {
		return img, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "client_key"), client.privatePEM, 0o600); err != nil {
		return img, err
	}
	for link, dst := range map[string]string{"vmlinuz": "vmlinuz", "initrd.img": "initrd.img"} {
		target, err := filepath.EvalSymlinks(filepath.Join(root, link))
		if err != nil || !strings.HasPrefix(target, root+"/") {
			// The link is absolute inside the image: resolve it there.
			t, lerr := os.Readlink(filepath.Join(root, link))
			if lerr != nil {
				return img, fmt.Errorf("build qemu image: no /%s in the image: %v", link, lerr)
			}
			if !filepath.IsAbs(t) {
				t = "/" + t
			}
			target = filepath.Join(root, t)
		}
		data, err := os.ReadFile(target)
		if err != nil {
			return img, fmt.Errorf("build qemu image: %w", err)
		}
		if err := os.WriteFile(filepath.Join(tmp, dst), data, 0o644); err != nil {
			return img, err
		}
	}
	if out, err := exec.CommandContext(ctx, "mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", root, "-F",
		filepath.Join(tmp, "disk.raw"), "4G").CombinedOutput(); err != nil {
		return img, fmt.Errorf("build qemu image: mke2fs: %v: %s", err, out)
	}
	if err := removeTree(root); err != nil {
		return img, err
	}
	if err := syncDir(tmp); err != nil {
		return img, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return img, err
	}
	logf("vmtest: built the qemu image in %v", time.Since(start).Round(time.Second))
	return img, nil
}

// removeTree removes a debootstrap tree (whose directories may be
// read-only).
func removeTree(p string) error {
	filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(q, 0o755)
		}
		return nil
	})
	return os.RemoveAll(p)
}
