// Saved workflows keep loading when a Likeness node's inputs change.
//
// The editor saves a node's widget values as a plain list, in widget order. When an input is renamed, added or
// moved (e.g. `seed` became `train_seed`, which also dropped the "control after generate" value that followed it),
// an old list would land on the wrong widgets. So each Likeness node also saves the names of its widgets
// (`likeness_widgets`, beside `widgets_values`), and loading puts every saved value back on the widget of that name,
// wherever it is now; a widget the saved workflow does not have keeps its default. Workflows saved before names were
// saved are read with the layouts below (the widgets of Likeness 0.1.0, "control_after_generate" included), so
// they migrate the same way. Old names that were renamed map to the new ones (RENAMED).
//
// Works with the 2024 frontend and the current one: both call `node.configure(info)` with the saved node.

import { app } from "../../scripts/app.js";

// LAYOUTS_V0 (a test reads this block as JSON: keep it plain)
const LAYOUTS_V0 = {
  "LikenessLoadCheckpoint": ["ckpt_name", "vae_name", "ema"],
  "LikenessFaceCropDataset": ["folder", "instance_prompt", "resolution", "margin", "no_face", "detector", "captions",
    "recursive", "duplicates", "duplicate_distance", "blur_threshold", "max_megapixels"],
  "LikenessGenerateClassImages": ["class_prompt", "negative_prompt", "count", "resolution", "steps", "cfg", "sampler",
    "class_seed", "batch_size", "output_folder"],
  "LikenessDreamBoothTrain": ["output_name", "instance_prompt", "class_prompt", "steps", "learning_rate",
    "batch_size", "resolution", "train_text_encoder", "prior_loss_weight", "seed", "control_after_generate",
    "sample_every", "save_dtype", "instance_folder", "class_folder", "force_retrain"],
  "LikenessTrainingOptions": ["gradient_accumulation", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps",
    "optimizer", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "noise_offset",
    "text_encoder_steps", "mixed_precision", "gradient_checkpointing", "attention", "cache_latents",
    "cache_text_embeddings", "sample_prompts", "sample_at_end", "sample_seed", "sample_steps", "sample_guidance",
    "checkpoint_every", "keep_checkpoints", "save_state_on_stop"],
  "LikenessLoRATrain": ["output_name", "instance_prompt", "class_prompt", "steps", "learning_rate", "batch_size",
    "resolution", "train_text_encoder", "prior_loss_weight", "seed", "control_after_generate", "sample_every",
    "lora_rank", "lora_alpha", "lora_layers", "lora_dropout", "save_dtype", "training_comment", "instance_folder",
    "class_folder", "force_retrain"],
  "LikenessExtractLoRA": ["rank", "layers", "text_encoder", "output_name"],
  "LikenessApplyTrainedModel": ["source", "strength_model", "strength_clip"]
};
// END LAYOUTS_V0

const RENAMED = { seed: "train_seed" }; // old widget name -> new one
const DROPPED = new Set(["control_after_generate"]); // values that belonged to a widget that is gone

function savedNames(type, info) {
  const values = info.widgets_values;
  if (Array.isArray(info.likeness_widgets)) return info.likeness_widgets;
  const v0 = LAYOUTS_V0[type];
  // the 2024 editor also saved the value of a widget an extension adds at the end (the training monitor)
  if (v0 && (values.length === v0.length || values.length === v0.length + 1)) return v0;
  return null;
}

export function migrateWidgetValues(node, info) {
  const values = info?.widgets_values;
  if (!Array.isArray(values) || !node.widgets?.length) return info;
  const names = savedNames(node.comfyClass || node.type, info);
  if (!names) return info;
  const byName = new Map();
  names.forEach((name, i) => {
    if (i < values.length && name && !DROPPED.has(name)) byName.set(RENAMED[name] || name, values[i]);
  });
  const targets = node.widgets.filter((w) => w && w.serialize !== false);
  const moved = targets.map((w) => (byName.has(w.name) ? byName.get(w.name) : w.value));
  return { ...info, widgets_values: moved };
}

app.registerExtension({
  name: "likeness.migrate",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Likeness")) return;
    // The 2024 frontend copies LiteGraph's methods onto the class only when it is registered, after this hook:
    // fall back to LGraphNode's own configure then.
    const own = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      const configure = own || globalThis.LGraphNode?.prototype?.configure || globalThis.LiteGraph?.LGraphNode?.prototype?.configure;
      return configure.call(this, migrateWidgetValues(this, info));
    };
    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (o) {
      const r = onSerialize?.apply(this, arguments);
      if (Array.isArray(o.widgets_values) && this.widgets) {
        o.likeness_widgets = this.widgets.slice(0, o.widgets_values.length).map((w) => w?.name ?? null);
      }
      return r;
    };
  },
});
