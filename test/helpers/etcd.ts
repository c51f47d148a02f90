/** A real etcd for a test: bench/etcd.ts (shared with bench/ha.ts). Call stopAllEtcd() in afterAll. */
export { startEtcd, stopAllEtcd, type EtcdServer } from '../../bench/etcd.js'
