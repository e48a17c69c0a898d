//go:build tools

// Package tools exists so this wrapper module is a valid module; the build
// script builds k8s.io/kubernetes/cmd/... main packages from it directly.
package tools
