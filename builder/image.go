package builder

import (
	"fmt"
	"os"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/oci"
	"github.com/hashicorp/hcl/v2"
)

// ImageHost returns the host that an image of name is built from (deploy
// image DIR#NAME): the one host name selects, or, when name is a role and
// no host, a host applying the role alone ([Fleet.RoleHost]) for arch ("":
// amd64). Problems of the fleet are diagnostics; a name that selects other
// than one host, or an arch other than a host's own, is an error (the
// request's problem, not the fleet's).
func (f *Fleet) ImageHost(name, arch string) (*Host, hcl.Diagnostics, error) {
	if _, isRole := f.Roles[name]; isRole {
		if _, isHost := f.Host(name); !isHost {
			h, diags := f.RoleHost(name, arch)
			return h, diags, nil
		}
	}
	hosts, diags := f.Select([]string{name})
	switch {
	case diags.HasErrors():
		return nil, diags, nil
	case len(hosts) != 1:
		return nil, diags, fmt.Errorf("%q selects %d hosts; name one host or role", name, len(hosts))
	case arch != "" && arch != hosts[0].Arch:
		return nil, diags, fmt.Errorf("--arch %s: host %s is %s; --arch is for a role's image", arch, hosts[0].Name, hosts[0].Arch)
	}
	return hosts[0], diags, nil
}

// NoServiceError is [Builder.ImageConfig]'s error for a service the host
// does not have.
type NoServiceError struct{ Host, Service string }

func (e *NoServiceError) Error() string {
	return fmt.Sprintf("%s has no service %q", e.Host, e.Service)
}

// ImageConfig is what an image of a built host runs: the command,
// environment and working directory of its service called service
// (without .service), or of its only service when service is "". With
// several services and none named the image runs nothing. notes say so,
// and what the image cannot carry over of the service (see
// [oci.ServiceConfig]).
func (b *Builder) ImageConfig(res *Result, service string) (cfg oci.ImageConfig, notes []string, err error) {
	cfg = oci.ImageConfig{Arch: res.Config.Arch, Labels: map[string]string{
		"org.opencontainers.image.title": res.Host,
		"dev.deploy.system":              res.SystemPath,
	}}
	var services []manifest.Unit
	for _, u := range res.Manifest.Units {
		if strings.HasSuffix(u.Name, ".service") && (service == "" || u.Name == service+".service") {
			services = append(services, u)
		}
	}
	switch {
	case service != "" && len(services) == 0:
		return cfg, nil, &NoServiceError{Host: res.Host, Service: service}
	case len(services) != 1:
		return cfg, []string{fmt.Sprintf("%s has %d services; the image has no entrypoint (choose one with --service NAME)", res.Host, len(services))}, nil
	}
	unit, err := os.ReadFile(b.Store.RealPath(services[0].Source))
	if err != nil {
		return cfg, nil, err
	}
	run, ns, err := oci.ServiceConfig(string(unit))
	if err != nil {
		return cfg, nil, fmt.Errorf("service %s: %w", services[0].Name, err)
	}
	for _, n := range ns {
		notes = append(notes, fmt.Sprintf("service %s: %s", services[0].Name, n))
	}
	cfg.Entrypoint, cfg.Env, cfg.WorkingDir = run.Entrypoint, run.Env, run.WorkingDir
	cfg.Labels["dev.deploy.service"] = services[0].Name
	return cfg, notes, nil
}
