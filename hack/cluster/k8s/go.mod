module fdp.local/k8swrapper

go 1.26

require k8s.io/kubernetes K8S_VERSION

// The build script appends one `replace k8s.io/<staging> v0.0.0 => k8s.io/<staging> v0.N.P`
// line per staging module, generated from k8s.io/kubernetes's own go.mod.
