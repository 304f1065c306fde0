"""The jobs API: submit, list, show, cancel and read a job's log (bearer tokens)."""

from __future__ import annotations

from aiohttp import web

from coordinator.errors import Forbidden, Unprocessable
from coordinator.http.bodies import decode_json_body, json_body
from coordinator.http.keys import COORDINATOR, Handler
from coordinator.http.openapi import Route
from coordinator.http.tokens import principal
from coordinator.jobs.views import job_view
from shared.messages import api, decode_query
from shared.messages.labels import BadSelector, parse_selector
from shared.messages.quote import JobQuote


async def submit_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    raw = await json_body(request)
    coordinator.jobs.require_poster(who)
    body = decode_json_body(api.JobSubmit, raw, code="invalid_job")
    job, created = await coordinator.jobs.submit(who, body, request.headers.get("Idempotency-Key"))
    return web.json_response(job_view(coordinator.state, job), status=201 if created else 200)


async def quote_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    coordinator.quotes.require_quoter(who)
    raw = await json_body(request)
    body = decode_json_body(api.JobSubmit, raw, code="invalid_job")
    return web.json_response(await coordinator.quotes.quote(who, body))


async def list_jobs(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    query = decode_query(api.JobListQuery, request.query)
    try:
        labels = parse_selector(query.label) if query.label is not None else None
    except BadSelector as exc:
        raise Unprocessable(str(exc)) from None
    jobs = coordinator.jobs.search(who, query.state, query.limit, query.name, labels)
    return web.json_response({"jobs": [job_view(coordinator.state, j, who.role) for j in jobs]})


async def show_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    job = coordinator.jobs.find(who, request.match_info["job_id"])
    return web.json_response(job_view(coordinator.state, job, who.role))


async def cancel_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    job = await coordinator.jobs.cancel(who, request.match_info["job_id"])
    return web.json_response(job_view(coordinator.state, job))


async def job_logs(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    if who.role != "enterprise":
        # what a job prints is the enterprise's and its provider's, not the auditors'
        raise Forbidden("job logs are for the enterprise that posted the job")
    job = coordinator.jobs.find(who, request.match_info["job_id"])
    query = decode_query(api.JobLogQuery, request.query)
    offset, limit = query.offset, query.limit
    data, _ = await coordinator.logs.read(job.id, offset, limit)
    full_page = len(data) == limit
    if full_page:
        data = _whole_characters(data)
    return web.json_response(
        {
            "job_id": job.id,
            "offset": offset,
            "next_offset": offset + len(data),
            "data": data.decode("utf-8", errors="replace"),
            "job_state": job.state,
            "complete": job.final and not full_page,
        }
    )


def _whole_characters(data: bytes) -> bytes:
    """Cut a page of log bytes before a UTF-8 character it would split (the next page has it)."""
    for cut in range(len(data), max(0, len(data) - 4), -1):
        try:
            data[:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < cut - 3:
                return data  # invalid bytes in the log, not a split character: send as is
            continue
        return data[:cut]
    return data


ROUTES: list[tuple[Route, Handler]] = [
    (
        Route(
            "POST",
            "/v1/jobs",
            api.JobSubmit,
            api.JobView,
            "Post a job (enterprise)",
            status=201,
            headers=("Idempotency-Key",),
            replayed="the job this idempotency key already created",
        ),
        submit_job,
    ),
    (
        Route(
            "POST",
            "/v1/jobs/quote",
            api.JobSubmit,
            JobQuote,
            "What a job would meet if posted now: the offers that fit it, its price (rounded "
            "up unless it is the job's max price), its voucher share and the most it would "
            "hold; nothing is stored, reserved or logged (enterprise; limited per enterprise)",
        ),
        quote_job,
    ),
    (
        Route(
            "GET",
            "/v1/jobs",
            None,
            api.JobList,
            "List your jobs, newest first, by state, name or labels (auditors: all, without env "
            "values, names or label values)",
            query=api.JobListQuery,
        ),
        list_jobs,
    ),
    (Route("GET", "/v1/jobs/{job_id}", None, api.JobView, "Show a job"), show_job),
    (
        Route(
            "POST",
            "/v1/jobs/{job_id}/cancel",
            None,
            api.JobView,
            "Cancel a job; a running one stops when its agent confirms",
        ),
        cancel_job,
    ),
    (
        Route(
            "GET",
            "/v1/jobs/{job_id}/logs",
            None,
            api.JobLogPage,
            "Read a job's log from an offset (the enterprise's own jobs; auditors get 403)",
            query=api.JobLogQuery,
        ),
        job_logs,
    ),
]
