// Command etcd is a thin wrapper around etcd's own entry point.
//
// etcd's server module carries replace directives in its go.mod, so
// `go install go.etcd.io/etcd/server/v3@...` is refused; requiring it from
// this small module (where those replaces are ignored) builds the real server.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
