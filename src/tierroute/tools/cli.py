"""The `tierroute` command line: ask a running suite to score or route a prompt.

tierroute score "What is the capital of France?"
tierroute route "Prove that sqrt(2) is irrational." [--json] [--force-tier large]
tierroute --address 127.0.0.1:50061 probe     # gRPC health of any service: exit 0 if SERVING
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tools.cli_offline import offline_commands

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _explain(error: grpc.RpcError, address: str) -> str:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
        return (
            f"cannot reach the router at {address}: is the suite running? Start it with "
            "`make run`, or pass --address HOST:PORT"
        )
    return f"{code.name}: {error.details()}"


def _slo(args: argparse.Namespace) -> pb.Slo | None:
    if args.max_ttft_ms is None and args.max_cost_per_1k is None:
        return None
    slo = pb.Slo()
    if args.max_ttft_ms is not None:
        slo.max_ttft_ms = args.max_ttft_ms
    if args.max_cost_per_1k is not None:
        slo.max_cost_per_1k = args.max_cost_per_1k
    return slo


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS verified against --tls-ca (with probe's client certificate for mTLS,
    and the name to verify the server by, when given)."""
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)
    ca = Path(args.tls_ca).read_bytes()
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    credentials = grpc.ssl_channel_credentials(
        ca,
        Path(key).read_bytes() if key else None,
        Path(cert).read_bytes() if cert else None,
    )
    name = getattr(args, "tls_server_name", None)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def probe(args: argparse.Namespace) -> int:
    """gRPC health (grpc.health.v1) of the service at --address: 0 when SERVING, else 1 with
    what it answered. What the Kubernetes manifests' startup, readiness and liveness probes
    run, inside the image (it has no grpc_health_probe)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if bool(args.tls_cert) != bool(args.tls_key):
        print("tierroute probe: give --tls-cert and --tls-key together", file=sys.stderr)
        return 2
    try:
        with _channel(args) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                metadata=_auth(args),
            )
    except grpc.RpcError as error:  # not "the router": any service may be probed
        print(
            f"tierroute probe: {args.address} {error.code().name}: {error.details()}",
            file=sys.stderr,
        )
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def certs(args: argparse.Namespace) -> int:
    from tierroute.runtime.tls import write_dev_certs

    for path in write_dev_certs(args.out, args.host):
        print(path)
    return 0


def _auth(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The bearer token's metadata, when there is one (--token or TIERROUTE_TOKEN)."""
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def token_new(args: argparse.Namespace) -> int:
    from tierroute.runtime.auth import add_client

    token = add_client(args.file, args.name)
    print(token)
    print(
        f"client {args.name!r} added to {args.file} (its SHA-256 only). The token above is "
        "shown once: give it to the client, keep it nowhere else.",
        file=sys.stderr,
    )
    return 0


def _why(d: pb.RoutingDecision) -> str:
    """The decision's selection reasons, for a human."""
    why = f"; {', '.join(d.reasons)}" if d.reasons else ""
    if d.predicted_quality:
        ranked = sorted(d.predicted_quality.items(), key=lambda kv: -kv[1])
        why += "; predicted quality " + ", ".join(f"{t} {q:.3f}" for t, q in ranked)
    return why


def score(args: argparse.Namespace) -> int:
    request = pb.ScoreRequest(
        prompt=args.prompt, bypass_cache=args.no_cache, max_tokens=args.max_tokens, slo=_slo(args)
    )
    with _channel(args) as channel:
        response = pb_grpc.RouterServiceStub(channel).Score(
            request, timeout=args.timeout, metadata=_auth(args)
        )
    d = response.decision
    if args.json:
        print(json.dumps(_as_dict(d)))
    else:
        reasons = ", ".join(
            pb.ReasonCode.Name(r).removeprefix("REASON_CODE_") for r in d.reason_codes
        )
        print(
            f"tier {d.tier}  score {d.complexity_score:.2f}  confidence {d.confidence:.2f}  "
            f"category {d.category}  ({reasons}{_why(d)}; {d.router_latency_ms:.1f} ms"
            f"{', cached' if d.cache_hit else ''})"
        )
    return 0


def route(args: argparse.Namespace) -> int:
    sampling = common_pb.SamplingParams(max_tokens=args.max_tokens)
    if args.temperature is not None:
        sampling.temperature = args.temperature
    request = pb.RouteRequest(
        prompt=args.prompt,
        sampling=sampling,
        disable_escalation=args.no_escalation,
        force_tier=args.force_tier or "",
        bypass_cache=args.no_cache,
        slo=_slo(args),
    )
    out = sys.stdout
    with _channel(args) as channel:
        for event in pb_grpc.RouterServiceStub(channel).Route(
            request, timeout=args.timeout, metadata=_auth(args)
        ):
            kind = event.WhichOneof("event")
            if args.json:
                print(json.dumps({kind: _as_dict(getattr(event, kind))}), flush=True)
            elif kind == "decision":
                d = event.decision
                print(
                    f"[routed to {d.tier}: score {d.complexity_score:.2f}, {d.category}{_why(d)}]",
                    file=sys.stderr,
                )
            elif kind == "chunk":
                out.write(event.chunk.text)
                out.flush()
            elif kind == "escalation":
                e = event.escalation
                reason = pb.EscalationReason.Name(e.reason).removeprefix("ESCALATION_REASON_")
                print(
                    f"\n[escalated {e.from_tier} -> {e.to_tier}: {reason}, "
                    f"confidence {e.confidence:.2f}]",
                    file=sys.stderr,
                )
            else:
                s = event.summary
                escalated = (
                    f", escalated ({pb.EscalationReason.Name(s.escalation_reason)})"
                    if s.escalated
                    else ""
                )
                print(
                    f"\n[served by {s.tier}{escalated}; {s.usage.prompt_tokens}+"
                    f"{s.usage.completion_tokens} tokens, ${s.cost_usd:.6f}, "
                    f"{s.latencies.total_ms:.0f} ms total, first token "
                    f"{s.latencies.time_to_first_token_ms:.0f} ms]",
                    file=sys.stderr,
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierroute", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the router, host:port")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (a deadline)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("TIERROUTE_TLS_CA", ""),
        help="CA to verify a TLS router with (default: $TIERROUTE_TLS_CA; unset: plaintext)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TIERROUTE_TOKEN", ""),
        help="bearer token for a router with auth (default: $TIERROUTE_TOKEN)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score", help="which tier would answer a prompt")
    s.add_argument("prompt")
    s.add_argument("--no-cache", action="store_true", help="bypass the routing cache")
    s.add_argument(
        "--max-tokens", type=int, default=0, help="answer budget for the context-window check"
    )
    s.set_defaults(run=score)
    r = commands.add_parser("route", help="answer a prompt through the cheapest good tier")
    r.add_argument("prompt")
    r.add_argument("--max-tokens", type=int, default=0, help="0: the tier's default")
    r.add_argument("--temperature", type=float)
    r.add_argument("--force-tier", help="skip scoring and use this tier")
    r.add_argument("--no-escalation", action="store_true", help="strict-latency mode")
    r.add_argument("--no-cache", action="store_true", help="bypass the routing cache")
    for p in (s, r):
        p.add_argument(
            "--max-ttft-ms", type=float, help="SLO: pass over tiers measured slower to first token"
        )
        p.add_argument(
            "--max-cost-per-1k", type=float, help="SLO: pass over tiers dearer per 1,000 tokens"
        )
    r.set_defaults(run=route)
    ce = commands.add_parser("certs", help="a development CA and certificates (make certs)")
    ce.add_argument("--out", type=Path, default=Path("certs"))
    ce.add_argument(
        "--host", action="append", default=[], help="a name or IP the services are dialled by"
    )
    ce.set_defaults(run=certs)
    tok = commands.add_parser("token", help="clients' bearer tokens (router.auth_tokens_file)")
    tok_commands = tok.add_subparsers(dest="token_command", required=True)
    tn = tok_commands.add_parser("new", help="a new client: prints its token once, keeps its hash")
    tn.add_argument("name", help="the client's name, as logs and spans will show it")
    tn.add_argument("--file", type=Path, required=True, help="the tokens file (created 0600)")
    tn.set_defaults(run=token_new)
    pr = commands.add_parser(
        "probe", help="gRPC health of any tierroute service: exit 0 if SERVING (k8s probes)"
    )
    pr.add_argument("--service", default="", help="the health service name ('': the server)")
    pr.add_argument("--tls-cert", help="client certificate, for a service that asks for one")
    pr.add_argument("--tls-key", help="the client certificate's key")
    pr.add_argument("--tls-server-name", help="the name to verify the server's certificate by")
    pr.set_defaults(run=probe)
    offline_commands(commands)
    args = parser.parse_args(argv)
    args.command_line = "tierroute " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except grpc.RpcError as error:
        print(f"tierroute: {_explain(error, args.address)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:  # bad data, artifact or config
        print(f"tierroute {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
