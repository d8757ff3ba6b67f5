// Package mesh is how the operator reaches a host: direct TCP, ProxyJump and
// Tailscale (tsnet), with SSH on top and host keys always verified.
package mesh
