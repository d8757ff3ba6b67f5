package agentapi

import (
	"path"
	"strconv"
)

// The agent's layout on a host. An operator passes the state directory to
// every command (--state-dir); the run directory is always the default on
// hosts an operator reaches.
const (
	// DefaultStateDir holds the store, its metadata, the generations and
	// the logs: STATE/{store,db,profiles,log}.
	DefaultStateDir = "/var/lib/deploy"
	// DefaultRunDir holds what lasts one boot: the running system's link,
	// the decrypted secrets, the locks and the activation state.
	DefaultRunDir = "/run/deploy"
	// AgentBin is the agent's executable inside an agent store path (and
	// under a system's agent link: SYSTEM/agent/bin/deploy-agent).
	AgentBin = "bin/deploy-agent"
	// AgentName ends the name of every agent store path
	// (HASH-deploy-agent).
	AgentName = "deploy-agent"
	// PullConfigFile is where a generation with a pull block installs the
	// host's [PullConfig], which deploy-agent pull reads.
	PullConfigFile = "/etc/deploy/pull.json"
	// DefaultHostKeyFile is the key a host in pull mode signs its status
	// documents with (its SSH ed25519 host key), unless its [PullConfig]
	// names another.
	DefaultHostKeyFile = "/etc/ssh/ssh_host_ed25519_key"
)

// StoreDir is the store of the agent whose state directory is stateDir.
func StoreDir(stateDir string) string { return path.Join(orState(stateDir), "store") }

// DBDir holds the store's metadata: one HASH.narinfo per valid path.
func DBDir(stateDir string) string { return path.Join(orState(stateDir), "db") }

// ProfilesDir holds the generations' links and the GC roots.
func ProfilesDir(stateDir string) string { return path.Join(orState(stateDir), "profiles") }

// BootProfile is the link to the boot default's system.
func BootProfile(stateDir string) string { return path.Join(ProfilesDir(stateDir), "system") }

// GenerationLink is generation n's link to its system.
func GenerationLink(stateDir string, n int) string {
	return path.Join(ProfilesDir(stateDir), "system-"+strconv.Itoa(n)+"-link")
}

// CurrentSystem is the link to the running system under the run directory.
func CurrentSystem(runDir string) string {
	if runDir == "" {
		runDir = DefaultRunDir
	}
	return path.Join(runDir, "current-system")
}

// SecretsDir is where the running generation's secrets are decrypted (a
// link to a directory on a ramfs, swapped at each activation).
func SecretsDir(runDir string) string {
	if runDir == "" {
		runDir = DefaultRunDir
	}
	return path.Join(runDir, "secrets")
}

// SystemAgent is the executable of the agent that a system (or an agent
// store path, with no "agent" link, see [AgentExecutable]) brings.
func SystemAgent(system string) string { return path.Join(system, "agent", AgentBin) }

// AgentExecutable is the executable of an agent store path.
func AgentExecutable(agentPath string) string { return path.Join(agentPath, AgentBin) }

func orState(stateDir string) string {
	if stateDir == "" {
		return DefaultStateDir
	}
	return stateDir
}
