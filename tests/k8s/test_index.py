"""The index: owners' contributions, empty non-terminals, prepared answers and their invalidation."""

from __future__ import annotations

import gc

from dnslib import DNSRecord

from clusterdns.k8s.index import Index
from clusterdns.k8s.objects import from_dict
from clusterdns.k8s.records import Options
from clusterdns.k8s.selector import parse as selector
from clusterdns.k8s.store import Filters, Store
from clusterdns.plugin import NOERROR
from clusterdns.wire import T_A, T_PTR, T_SRV, parse_query

ZONE = "cluster.local."


def query(name: str, qtype: str = "A") -> bytes:
    return bytes(DNSRecord.question(name, qtype).pack())


def test_set_replace_and_remove_tracks_empty_non_terminals() -> None:
    idx = Index([ZONE], 5)
    idx.set("svc/a", {"_http._tcp.a.ns.svc.cluster.local.": [(T_SRV, (0, 100, 80, "a.ns.svc.cluster.local."))]})
    for ent in (
        "_tcp.a.ns.svc.cluster.local.",
        "a.ns.svc.cluster.local.",
        "ns.svc.cluster.local.",
        "svc.cluster.local.",
    ):
        assert idx.exists(ent)
    assert not idx.exists("cluster.local.")  # the apex is the plugin's business
    assert idx.answer("a.ns.svc.cluster.local.", T_A) is not None  # NODATA, not NXDOMAIN
    idx.set("svc/a", {})
    assert not idx.exists("ns.svc.cluster.local.")
    assert idx.answer("a.ns.svc.cluster.local.", T_A) is None


def test_two_owners_of_one_name_merge() -> None:
    idx = Index([ZONE, "in-addr.arpa."], 5)
    idx.set("svc/a", {"1.0.0.10.in-addr.arpa.": [(12, "a.ns.svc.cluster.local.")]})
    idx.set("svc/b", {"1.0.0.10.in-addr.arpa.": [(12, "b.ns.svc.cluster.local.")]})
    assert len(idx.records("1.0.0.10.in-addr.arpa.")) == 2
    idx.set("svc/a", {})
    assert idx.records("1.0.0.10.in-addr.arpa.") == ((12, "b.ns.svc.cluster.local."),)


def test_prepared_answer_is_invalidated_on_change() -> None:
    idx = Index([ZONE], 5)
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, "10.0.0.1")]})
    req = parse_query(query("A.ns.svc.cluster.local"), "udp", ("127.0.0.1", 1))
    first = idx.answer(req.qname, T_A)
    assert first is not None and first.rcode == NOERROR
    assert "a.ns.svc.cluster.local." in idx.prepared
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, "10.0.0.2")]})
    assert "a.ns.svc.cluster.local." not in idx.prepared
    second = idx.answer(req.qname, T_A)
    assert second is not None
    parsed = DNSRecord.parse(second.build(req, idx.soa_rr(ZONE)))
    assert [str(r.rdata) for r in parsed.rr] == ["10.0.0.2"]
    assert str(parsed.q.qname) == "A.ns.svc.cluster.local."  # the client's case is echoed


def test_unchanged_owner_is_a_no_op() -> None:
    idx = Index([ZONE], 5)
    recs = {"a.ns.svc.cluster.local.": [(T_A, "10.0.0.1")]}
    assert idx.set("svc/a", recs)
    idx.answer("a.ns.svc.cluster.local.", T_A)
    gen = idx.generation
    assert not idx.set("svc/a", dict(recs))
    assert "a.ns.svc.cluster.local." in idx.prepared
    assert idx.generation == gen  # nothing changed: memos about absent names stay valid
    assert idx.set("svc/a", {})
    assert idx.generation == gen + 1


def _svc(name: str, ns: str, labels: dict | None = None) -> dict:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"clusterIP": "10.0.0.9"},
    }


def test_store_replace_removes_missing_and_namespace_exists_while_objects_live_in_it() -> None:
    idx = Index([ZONE], 5)
    store = Store(idx, Options((ZONE,)))
    store.replace(["Service"], [from_dict(_svc("a", "team")), from_dict(_svc("b", "team"))])
    assert idx.exists("a.team.svc.cluster.local.") and store.namespace_exists("team")
    store.replace(["Service"], [from_dict(_svc("b", "team"))])
    assert not idx.exists("a.team.svc.cluster.local.") and store.namespace_exists("team")
    store.replace(["Service"], [])
    assert not store.namespace_exists("team")


def test_store_filters_namespaces_and_labels() -> None:
    idx = Index([ZONE], 5)
    store = Store(idx, Options((ZONE,)), Filters(namespaces=frozenset({"a"}), labels=selector("app=x")))
    store.upsert(from_dict(_svc("s1", "a", {"app": "x"})))
    store.upsert(from_dict(_svc("s2", "a", {"app": "y"})))
    store.upsert(from_dict(_svc("s3", "b", {"app": "x"})))
    assert idx.exists("s1.a.svc.cluster.local.")
    assert not idx.exists("s2.a.svc.cluster.local.")
    assert not idx.exists("s3.b.svc.cluster.local.") and not store.namespace_exists("b")


def test_endpoint_slice_change_rederives_its_service_only() -> None:
    idx = Index([ZONE], 5)
    store = Store(idx, Options((ZONE,)))
    store.upsert(
        from_dict({"kind": "Service", "metadata": {"name": "h", "namespace": "n"}, "spec": {"clusterIP": "None"}})
    )
    store.upsert(from_dict(_svc("other", "n")))
    idx.answer("other.n.svc.cluster.local.", T_A)
    slice_ = {
        "kind": "EndpointSlice",
        "metadata": {"name": "h-1", "namespace": "n", "labels": {"kubernetes.io/service-name": "h"}},
        "endpoints": [{"addresses": ["10.9.0.1"]}],
    }
    store.upsert(from_dict(slice_))
    assert idx.records("h.n.svc.cluster.local.") == ((T_A, "10.9.0.1"),)
    assert "other.n.svc.cluster.local." in idx.prepared  # untouched
    slice_["endpoints"] = [{"addresses": ["10.9.0.1"], "conditions": {"ready": False}}]
    store.upsert(from_dict(slice_))
    assert not idx.exists("h.n.svc.cluster.local.")


def test_names_outside_the_zones_are_left_out() -> None:
    idx = Index([ZONE], 5)
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, "10.0.0.1")], "1.0.0.10.in-addr.arpa.": [(12, "a.")]})
    assert idx.exists("a.ns.svc.cluster.local.") and not idx.exists("1.0.0.10.in-addr.arpa.")


def test_store_namespace_labels_serve_only_matching_namespaces() -> None:
    idx = Index([ZONE], 5)
    store = Store(idx, Options((ZONE,)), Filters(namespace_labels=selector("team=a")))
    store.upsert(from_dict({"kind": "Namespace", "metadata": {"name": "ns-a", "labels": {"team": "a"}}}))
    store.upsert(from_dict({"kind": "Namespace", "metadata": {"name": "ns-b", "labels": {"team": "b"}}}))
    store.upsert(from_dict(_svc("s", "ns-a")))
    store.upsert(from_dict(_svc("s", "ns-b")))
    assert idx.exists("s.ns-a.svc.cluster.local.") and store.namespace_exists("ns-a")
    assert not idx.exists("s.ns-b.svc.cluster.local.") and not store.namespace_exists("ns-b")
    store.upsert(from_dict({"kind": "Namespace", "metadata": {"name": "ns-b", "labels": {"team": "a"}}}))
    assert idx.exists("s.ns-b.svc.cluster.local.")  # a relabelled namespace brings its Services in


def test_reverse_names_are_kept_under_their_address_and_answer_as_names() -> None:
    idx = Index([ZONE, "in-addr.arpa."], 5)
    ip, ptr = "10.0.0.1", "1.0.0.10.in-addr.arpa."
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, ip)], ptr: [(T_PTR, "a.ns.svc.cluster.local.")]})
    assert ip in idx._records and "1.0.0.10.in-addr.arpa." not in idx._records  # one string for both
    assert idx.exists("1.0.0.10.in-addr.arpa.") and idx.exists("0.0.10.in-addr.arpa.")  # and its ENTs
    assert not idx.exists("1.0.0.010.in-addr.arpa.") and not idx.exists("2.0.0.10.in-addr.arpa.")
    req = parse_query(query("1.0.0.10.in-addr.arpa", "PTR"), "udp", ("127.0.0.1", 1))
    first = idx.answer(req.qname, T_PTR)
    assert first is not None and "1.0.0.10.in-addr.arpa." in idx.prepared
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, ip)], ptr: [(T_PTR, "b.ns.svc.cluster.local.")]})
    assert "1.0.0.10.in-addr.arpa." not in idx.prepared  # invalidated by name though stored by address
    second = idx.answer(req.qname, T_PTR)
    assert second is not None
    assert [str(r.rdata) for r in DNSRecord.parse(second.build(req, b"")).rr] == ["b.ns.svc.cluster.local."]
    idx.set("svc/a", {})
    assert not idx.exists("1.0.0.10.in-addr.arpa.") and not idx.exists("0.0.10.in-addr.arpa.") and len(idx) == 0


def test_a_name_is_one_string_however_often_its_owner_is_derived() -> None:
    idx = Index([ZONE, "in-addr.arpa."], 5)
    store = Store(idx, Options((ZONE,)))
    store.upsert(from_dict(_svc("a", "n")))
    slice_ = {
        "kind": "EndpointSlice",
        "metadata": {"name": "a-1", "namespace": "n", "labels": {"kubernetes.io/service-name": "a"}},
        "endpoints": [{"addresses": ["10.9.0.1"]}],
    }
    store.upsert(from_dict(slice_))  # the Service's records derived a second time
    base = "a.n.svc.cluster.local."
    keys = {k: k for k in idx._records}
    owned = idx._owned["svc/n/a"]
    assert set(owned) == {base, "10-9-0-1." + base, "10.0.0.9", "10.9.0.1"}  # PTRs under their address
    assert all(keys[k] is k for k in owned)  # _owned holds the very strings the records are kept under
    ptr = idx._records["10.0.0.9"]
    assert isinstance(ptr, tuple) and ptr[2] is keys[base] and ptr[0] is idx._records[base][0]  # type: ignore[index]


def test_big_tables_stay_tracked_by_the_collector() -> None:
    """An untracked dict is tracked again, into the youngest generation, by the next insert of a
    tuple: the next young collection would then walk the whole table after every change."""
    idx = Index([ZONE], 5)
    idx.set("svc/a", {"a.ns.svc.cluster.local.": [(T_A, "10.0.0.1")]})
    gc.collect()
    assert gc.is_tracked(idx._records) and gc.is_tracked(idx._owned)

