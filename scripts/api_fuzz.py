"""schemathesis against a live three-node ztna cluster (run through scripts/api-fuzz).

1. `ztna cluster up` in a temporary directory; the org's admin API key, the operator key, an
   enrolled machine's node key (enrolled by `ztna up --enrol-only`) and a bootstrap token are the
   credentials schemathesis presents, each for the security scheme the document names.
2. Malformed requests (`--mode negative`), phases examples, coverage and fuzzing, against each
   node: every answer must be a documented 4xx. Then a sample of the requests refused is sent
   again, each with its real credential, with the cluster's state (orgs, API keys, auth keys,
   machines) read before and after: each must be refused again, and the state be the same.
3. Well-formed requests (`--mode positive`), every phase including stateful (the document's
   links), against each node: no 5xx, every answer as the document says.

The failed-authentication throttle is raised for this cluster (`auth_failures_per_minute`): the
fuzzer's refused credentials would otherwise turn the run into 429s. The throttle has its own
integration test.
"""

import argparse
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port(taken):
    """A port below the kernel's ephemeral range that nothing listens on."""
    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        pass
    while True:
        port = random.randint(10000, max(10001, low - 1))
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


def call(url, body=None, token=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def state(server, api_key, operator_key, org):
    """What a malformed request must not change: every record, without the times that move on
    their own (last_seen, last_used_at) or are computed at read time (a key's state)."""

    def strip(records, *moving):
        return sorted(
            (json.dumps({k: v for k, v in r.items() if k not in moving}, sort_keys=True) for r in records)
        )

    _, orgs = call(f"{server}/api/org-admin", {"action": "list_orgs"}, operator_key)
    _, api_keys = call(f"{server}/api/org-admin", {"action": "list_api_keys"}, operator_key)
    keys, cursor = [], None
    while True:
        body = {"action": "list_auth_keys", "org_id": org, "limit": 1000, "cursor": cursor}
        status, page = call(f"{server}/api/key-management", body, api_key)
        assert status == 200, page
        keys += page["keys"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    _, machines = call(f"{server}/api/machine-admin", {"action": "list_machines", "org_id": org}, api_key)
    _, cluster = call(f"{server}/api/cluster", None, api_key)
    return {
        "members": sorted(json.dumps(m, sort_keys=True) for m in cluster["members"]),
        "orgs": strip(orgs["orgs"]),
        "api_keys": strip(api_keys["api_keys"], "last_used_at"),
        "auth_keys": strip(keys, "last_used_at", "state"),
        "machines": strip(machines["machines"], "last_seen"),
    }


def replay_refused(work, nodes, seed, api_key, operator_key, node_key, read_state, failed, sample=400):
    """Sends again a sample of the malformed requests the negative runs had refused (4xx, from
    their HAR files, with each path's real credential in place of the filtered one), and checks
    that each is refused again and that the state read before and after is the same.

    schemathesis's negative mode also sends its positive examples (which may create keys), so
    the state is compared around this replay of refused requests only."""
    refused = []
    for name in sorted(os.listdir(work)):
        if not name.endswith("-negative.har"):
            continue
        for entry in json.load(open(os.path.join(work, name)))["log"]["entries"]:
            request, status = entry["request"], entry["response"]["status"]
            if 400 <= status < 500 and request["method"] in ("POST", "DELETE", "PUT", "PATCH"):
                refused.append((request, status))
    random.Random(seed).shuffle(refused)
    refused = refused[:sample]
    # A replay of nothing, or only of requests refused for their credential, proves nothing.
    if len(refused) < 50 or sum(1 for _, first in refused if first != 401) < 25:
        failed.append(f"too few refused requests to replay ({len(refused)}): did the HAR reports change?")

    def credential(path, valid):
        """The path's credential; for a request refused for its credential (401), a wrong one of
        the same kind."""
        if path == "/api/cluster/init":
            return "Bearer ztna-bootstrap-" + secrets.token_hex(16)
        if path.startswith("/api/machine/"):
            wrong = f"nodekey-{secrets.token_hex(6)}-{secrets.token_hex(16)}"
            return f"Bearer {node_key if valid else wrong}"
        wrong = f"tskey-api-{secrets.token_hex(6)}-{secrets.token_hex(16)}"
        if path in ("/api/org-admin", "/api/cluster/membership", "/api/cluster/backup"):
            return f"Bearer {operator_key if valid else wrong}"
        return f"Bearer {api_key if valid else wrong}"

    before = read_state()
    answered = {}
    for request, first in refused:
        url = request["url"]
        path = "/" + url.split("/", 3)[3].split("?")[0]
        wanted = ("content-type", "authorization")
        headers = {h["name"].lower(): h["value"] for h in request["headers"] if h["name"].lower() in wanted}
        if "authorization" in headers:
            headers["authorization"] = credential(path, valid=first != 401)
        body = (request.get("postData") or {}).get("text")
        replay = urllib.request.Request(url, data=body.encode() if body is not None else None, method=request["method"])
        for name, value in headers.items():
            replay.add_header(name, value)
        try:
            with urllib.request.urlopen(replay, timeout=30) as answer:
                status = answer.status
        except urllib.error.HTTPError as e:
            status = e.code
        answered[status // 100] = answered.get(status // 100, 0) + 1
        if not 400 <= status < 500:
            failed.append(f"a refused request ({first}) was answered {status} when sent again: {request['method']} {path} {body!r:.200}")
    after = read_state()
    for what in before:
        if before[what] != after[what]:
            failed.append(f"refused requests changed the {what}")
            print(f"!! {what} before:\n{before[what]}\n!! after:\n{after[what]}")
    print(f"==> sent {len(refused)} refused requests again (answers by class: {answered}); "
          f"state before and after: {'the same' if before == after else 'DIFFERENT'}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ztna", required=True)
    parser.add_argument("--schemathesis", required=True)
    parser.add_argument("--examples", type=int, default=30, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randint(0, 2**31)
    print(f"==> api-fuzz: seed {seed} (scripts/api-fuzz --seed {seed} repeats this run)", flush=True)

    work = tempfile.mkdtemp(prefix="ztna-api-fuzz-")
    taken = set()
    nodes = []
    text = '[settings]\ncluster_name = "api-fuzz"\nauth_failures_per_minute = 1000000\n'
    for node_id in (1, 2, 3):
        api, raft = free_port(taken), free_port(taken)
        nodes.append(f"http://127.0.0.1:{api}")
        text += f'[[nodes]]\nid = {node_id}\napi_addr = "127.0.0.1:{api}"\nraft_addr = "127.0.0.1:{raft}"\n'
    text += '[tls]\nca_cert = "tls/ca.crt"\ncert = "tls/node{id}.crt"\nkey = "tls/node{id}.key"\n'
    cluster_file = os.path.join(work, "cluster.toml")
    with open(cluster_file, "w") as f:
        f.write(text)
    data = os.path.join(work, "data")
    log = open(os.path.join(work, "up.out"), "w")
    up = subprocess.Popen(
        [args.ztna, "cluster", "up", "--cluster", cluster_file, "--data-dir", data],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    failed = []
    try:
        deadline = time.time() + 90
        while "Press Ctrl-C" not in open(os.path.join(work, "up.out")).read():
            if up.poll() is not None or time.time() > deadline:
                sys.exit("the cluster did not come up:\n" + open(os.path.join(work, "up.out")).read())
            time.sleep(0.3)
        env = dict(line.split("=", 1) for line in open(os.path.join(data, "cluster.env")).read().split())
        api_key, org = env["QZ_API_KEY"], env["ZTNA_ORG"]
        operator_key = open(os.path.join(data, "operator.key")).read().strip()

        # The cluster is initialised and its token spent: any token is refused, as it must be.
        bootstrap = "ztna-bootstrap-" + secrets.token_hex(16)

        config = os.path.join(work, "schemathesis.toml")
        with open(config, "w") as f:
            f.write(
                "[auth.openapi.api_key]\nbearer = \"${FUZZ_API_KEY}\"\n"
                "[auth.openapi.api_key_basic]\nusername = \"${FUZZ_API_KEY}\"\npassword = \"\"\n"
                "[auth.openapi.operator_key]\nbearer = \"${FUZZ_OPERATOR_KEY}\"\n"
                "[auth.openapi.node_key]\nbearer = \"${FUZZ_NODE_KEY}\"\n"
                "[auth.openapi.bootstrap_token]\nbearer = \"${FUZZ_BOOTSTRAP}\"\n"
            )
        fuzz_env = dict(
            os.environ,
            FUZZ_API_KEY=api_key,
            FUZZ_OPERATOR_KEY=operator_key,
            FUZZ_BOOTSTRAP=bootstrap,
        )

        def enrol(name):
            """A machine enrolled as machines are (`ztna up`, with a one-shot key of its own); its node key."""
            body = {"action": "create_auth_key", "org_id": org, "tags": ["tag:fuzz"], "description": name}
            status, key = call(f"{nodes[0]}/api/key-management", body, api_key)
            assert status == 200, key
            agent_dir = os.path.join(work, name)
            agent_env = dict(os.environ, ZTNA_AUTH_KEY=key["key"], ZTNA_STATE_DIR=agent_dir)
            subprocess.run(
                [args.ztna, "up", "--server", ",".join(nodes), "--hostname", name, "--enrol-only"],
                env=agent_env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            return json.load(open(os.path.join(agent_dir, "ztna-state.json")))["node_key"]

        def schemathesis(node, mode, phases, excluded=(), only=None):
            command = [
                args.schemathesis, "--config-file", config, "run", f"{node}/api/openapi.json",
                "--mode", mode, "--phases", phases, "--max-examples", str(args.examples),
                "--seed", str(seed), "--checks", "all", "--workers", "2",
                # Well-formed requests name random org and key ids, answered 403/404 as
                # documented: acceptance of every schema-valid request is not a check here.
                # DELETE of a Tailscale-shaped key revokes it; it stays readable with `revoked`
                # and `invalid: true`, as Tailscale's API answers: not the 404 use_after_free
                # expects of a deleted resource.
                "--exclude-checks", "positive_data_acceptance,use_after_free",
                "--request-timeout", "30", "--suppress-health-check", "all",
                # The binary download is the server's own executable: tens of megabytes a case.
                "--exclude-path", "/download/ztna-linux-x86_64",
                "--no-color",
                # Every request and answer, to find what a failure sent.
                "--report", "har", "--report-har-path", os.path.join(work, f"run{len(runs)}-{mode}.har"),
            ]
            for operation in excluded:
                command += ["--exclude-operation-id", operation]
            if only:
                command += ["--include-operation-id", only]
            print(f"==> schemathesis {mode} ({phases}) against {node}{' (' + only + ' only)' if only else ''}", flush=True)
            # Each run has a machine of its own: a well-formed logout deletes it.
            run_env = dict(fuzz_env, FUZZ_NODE_KEY=enrol(f"fuzz-{len(runs)}"), FUZZ_API_KEY=fresh_api_key())
            runs.append(node)
            result = subprocess.run(command, env=run_env, cwd=work)
            if result.returncode != 0:
                failed.append(f"{mode} against {node}")

        def fresh_api_key():
            """An admin API key of the org for one run (a run may revoke the key it presents)."""
            body = {"action": "create_api_key", "org_id": org, "description": f"api-fuzz run {len(runs)}"}
            status, made = call(f"{nodes[0]}/api/org-admin", body, operator_key)
            assert status == 200, made
            return made["key"]

        # rotate_operator_key revokes the key every run presents: org-admin gets runs of its own,
        # last. Removing nodes is what an operator does, not a fuzzer to its own cluster (and a
        # well-formed add_node waits for a node that does not exist): membership gets malformed
        # requests only, and its own integration tests.
        runs = []
        reader = fresh_api_key()  # never shown to schemathesis: it reads the state
        for node in nodes:
            schemathesis(node, "negative", "examples,coverage,fuzzing", excluded=["org_admin"])
        replay_refused(work, nodes, seed, fresh_api_key(), operator_key, node_key=enrol("fuzz-replay"),
                       read_state=lambda: state(nodes[0], reader, operator_key, org), failed=failed)
        for node in nodes:
            schemathesis(node, "positive", "examples,coverage,fuzzing,stateful",
                         excluded=["org_admin", "cluster_membership"])
        schemathesis(nodes[2], "negative", "examples,coverage,fuzzing", only="org_admin")
        schemathesis(nodes[2], "positive", "examples,coverage,fuzzing", only="org_admin")  # no links
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
    if failed:
        print(f"api-fuzz FAILED ({len(failed)}): " + "; ".join(failed) + f" (seed {seed}; files in {work})")
        sys.exit(1)
    subprocess.run(["rm", "-rf", work])
    print("==> api-fuzz passed: no 5xx, every answer as documented, malformed requests refused and changed nothing")


if __name__ == "__main__":
    main()
