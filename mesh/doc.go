// Package mesh is how the operator reaches a host: a raw connection from a
// [Dialer] (direct TCP, a test network namespace, a tailnet), optionally
// through ProxyJump hosts, with SSH on top and host keys always verified.
//
// A [Config] says how to authenticate and verify; its zero value uses the
// ssh-agent, ~/.ssh/id_*, ~/.ssh/known_hosts and ~/.ssh/config. A [Target]
// is one host. [Config.Connect] returns a [Client]: one connection, on
// which [Client.Run], [Client.Start] and [Client.SFTP] open sessions.
//
// # Host keys
//
// A host's key is checked against its pinned Target.HostKey, or, when none
// is pinned, against known_hosts (plain and hashed entries, wildcards,
// @revoked). A key other than the known one is a *[HostKeyError] naming both
// fingerprints, and nothing is sent; a host known by a key of another type
// counts as changed too. A host with no key on record is an
// *[UnknownHostError] whose Hint suggests `deploy keyscan`, unless
// Config.TrustOnFirstUse is set: then its key is appended to the first
// known_hosts file (atomically, under a lock). Each jump host is verified
// the same way, against Config.JumpHostKeys or known_hosts.
//
// # Authentication
//
// Public keys only, in this order: Config.IdentityFiles, the host's
// IdentityFile entries from ~/.ssh/config, the keys of the ssh-agent at
// IdentityAgent or SSH_AUTH_SOCK, then ~/.ssh/id_ed25519, id_ecdsa and
// id_rsa, each key preceded by its user certificates. A
// passphrase-protected key file is used only through an agent that holds
// it; otherwise authentication fails with an error naming the file. Key
// material and passwords are never logged or put in errors.
//
// # ~/.ssh/config
//
// The file is evaluated as OpenSSH evaluates it (first value wins; Include;
// Host; Match all, host, originalhost and user — other Match criteria are
// refused). HostName, User, Port, IdentityFile, CertificateFile,
// IdentitiesOnly, IdentityAgent, ProxyJump, ProxyCommand, HostKeyAlias,
// StrictHostKeyChecking (only ever stricter), ConnectTimeout and
// ServerAliveInterval/CountMax are honoured. Values set in the Target win, as
// command-line options do, except that HostName replaces Target.Address.
// The file is consulted under Target.Name (or under Target.Address when
// only that matches a Host or Match host block).
//
// # Liveness and deadlines
//
// Dialing, the handshake, and every request that waits for a reply
// (session open, exec, subsystem, the SFTP handshake) have deadlines. A
// keepalive@openssh.com request goes out every KeepaliveInterval; when
// KeepaliveMax intervals pass without a reply the connection is declared
// dead and its TCP connection closed, so every blocked read and write fails
// with an *[UnreachableError] in phase "keepalive", and [Client.Dead] is
// closed. A stream cut this way never looks like a clean EOF.
//
// # Commands and sudo
//
// Commands are argv slices, shell-quoted for the remote login shell.
// A non-zero exit is an *[ExitError] with the tail of stderr. With
// Target.Sudo every command (and the SFTP server) runs under
// `sudo -S -p PROMPT`; sudo's prompt and the command's start are marked on
// stderr with random markers, so the password is written on stdin only when
// sudo asks and the caller's stdin only reaches the command, never sudo.
// The password comes from Config.SudoPassword or DEPLOY_SUDO_PASSWORD, and
// never appears on a command line.
//
// # Errors
//
// Callers branch on *[HostKeyError], *[UnknownHostError],
// *[RevokedHostKeyError], *[UnreachableError] (see its Phase) and
// *[ExitError] with errors.As; cmd/deploy maps them to exit codes.
package mesh
