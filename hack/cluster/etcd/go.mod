module fdp.local/etcdwrapper

go 1.26

require go.etcd.io/etcd/server/v3 ETCD_VERSION
