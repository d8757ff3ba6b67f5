// Package activation runs on the target: it manages generations, the
// activation lock, applying a system manifest (users, files, secrets, units),
// unit diffing, health checks and the magic-rollback watchdog.
package activation
