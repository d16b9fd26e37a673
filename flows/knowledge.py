"""The knowledge step: the table of a pipeline run's evaluation reports (tasks/knowledge.py), written as
knowledge.json and knowledge.md and published as the `knowledge` table artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.runs import record_process
from tasks.configs import KnowledgeTableConfig
from tasks.knowledge import write_knowledge
from tasks.knowledge_format import goal_lines, table_markdown, table_rows


@flow(name="knowledge", flow_run_name="knowledge", on_running=[record_process])
def knowledge(config: KnowledgeTableConfig) -> str:
    """Build the knowledge table of `config.run`; returns the path of knowledge.json."""
    table = write_knowledge(Path(config.run), Path(config.out))
    status = ", ".join(f"goal ({g['goal']}) {g['status']}" for g in table["goals"])
    create_table_artifact(key="knowledge", table=table_rows(table),
                          description=f"Knowledge kept by the speech models of {config.run}: {status}")
    create_markdown_artifact(key="knowledge-report", markdown=table_markdown(table),
                             description="Knowledge table, goals and commands")
    get_run_logger().info("knowledge:\n" + "\n".join(goal_lines(table, bullet="")).replace("**", ""))
    return str(Path(config.out) / "knowledge.json")
