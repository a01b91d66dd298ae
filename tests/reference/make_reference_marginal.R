# Reference fixtures for marginal means, contrasts, ICC and R² (mfr_outcomes.models.emmeans / r2).
#
# Run from the repository root:  Rscript tests/reference/make_reference_marginal.R
# Input:  tests/reference/data/marginal_prepost.csv and marginal_synthetic.csv (written by
#         `uv run python tests/reference/make_marginal_data.py`; the first is a seeded simulation,
#         the second a snapshot of data/synthetic's pain frame).
# Output: tests/reference/marginal_prepost.json and marginal_synthetic.json.
# Versions used are written into every JSON (R, lme4, lmerTest, emmeans, performance, insight).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(emmeans)
  library(performance)
  library(jsonlite)
})
emm_options(lmer.df = "satterthwaite")
TECH <- c("direct_pressure", "stretching", "massage", "combined")

tidy_emm <- function(obj, level = 0.95) {
  s <- as.data.frame(summary(obj, infer = c(TRUE, TRUE), level = level))
  names(s)[names(s) == "emmean"] <- "estimate"
  names(s)[names(s) == "SE"] <- "std_error"
  names(s)[names(s) == "lower.CL"] <- "ci_low"
  names(s)[names(s) == "upper.CL"] <- "ci_high"
  names(s)[names(s) == "t.ratio"] <- "statistic"
  names(s)[names(s) == "p.value"] <- "p_value"
  for (v in names(s)) if (is.factor(s[[v]])) s[[v]] <- as.character(s[[v]])
  s
}

versions <- function() {
  list(R = R.version.string,
       lme4 = as.character(packageVersion("lme4")),
       lmerTest = as.character(packageVersion("lmerTest")),
       emmeans = as.character(packageVersion("emmeans")),
       performance = as.character(packageVersion("performance")),
       insight = as.character(packageVersion("insight")))
}

model_block <- function(m, d) {
  vc <- as.data.frame(VarCorr(m))
  out <- list(
    formula = deparse(formula(m), width.cutoff = 500L),
    reml = isREML(m),
    nobs = nobs(m),
    coef = as.list(fixef(m)),
    vcov = unname(as.matrix(vcov(m))),
    coef_names = names(fixef(m)),
    sigma = sigma(m),
    theta = unname(getME(m, "theta")),
    varcorr = vc,
    singular = isSingular(m)
  )
  out
}

icc_r2 <- function(m) {
  ic <- suppressWarnings(performance::icc(m))
  r2 <- suppressWarnings(performance::r2_nakagawa(m))
  vv <- suppressWarnings(insight::get_variance(m))
  bg <- suppressWarnings(performance::icc(m, by_group = TRUE))
  bg <- if (is.data.frame(bg)) data.frame(group = as.character(bg$Group), icc = bg$ICC) else NA
  list(
    icc_by_group = bg,
    icc_adjusted = if (is.list(ic)) ic$ICC_adjusted else NA,
    icc_unadjusted = if (is.list(ic)) ic$ICC_unadjusted else NA,
    r2_marginal = unname(r2$R2_marginal),
    r2_conditional = unname(r2$R2_conditional),
    var_fixed = vv$var.fixed,
    var_random = vv$var.random,
    var_residual = vv$var.residual
  )
}

marginal_prepost <- function(path, name) {
  d <- read.csv(path, stringsAsFactors = FALSE)
  d$technique <- factor(d$technique, levels = TECH[TECH %in% unique(d$technique)])
  d$patient_id <- factor(d$patient_id)
  d$therapist_id <- factor(d$therapist_id)
  res <- list(data = basename(path), versions = versions(),
              data_check = list(nrow = nrow(d), value_sum = sum(d$value),
                                post_sum = sum(d$post)),
              models = list())

  # Model 1: random intercept and post slope per patient.
  m1 <- lmer(value ~ post * technique + session_number + (post | patient_id), data = d, REML = TRUE)
  e_pt <- emmeans(m1, ~ post | technique, at = list(post = c(0, 1)))
  e_post <- emmeans(m1, ~ post, at = list(post = c(0, 1)))
  e_tech <- emmeans(m1, ~ technique)                       # post and session_number at their means
  e_tech_at <- emmeans(m1, ~ technique, at = list(session_number = 3, post = 1))
  e_tp <- emmeans(m1, ~ technique | post, at = list(post = c(0, 1)))
  r1 <- list(
    model = model_block(m1, d),
    emm_post_by_technique = tidy_emm(e_pt),
    emm_post = tidy_emm(e_post),
    emm_technique = tidy_emm(e_tech),
    emm_technique_at = tidy_emm(e_tech_at),
    emm_technique_at_90 = tidy_emm(e_tech_at, level = 0.90),
    con_post_by_technique = tidy_emm(contrast(e_pt, "revpairwise")),
    con_post_by_technique_pairwise = tidy_emm(contrast(e_pt, "pairwise")),
    con_technique_tukey = tidy_emm(contrast(e_tech, "pairwise", adjust = "tukey")),
    con_technique_holm = tidy_emm(contrast(e_tech, "pairwise", adjust = "holm")),
    con_technique_bonferroni = tidy_emm(contrast(e_tech, "pairwise", adjust = "bonferroni")),
    con_technique_none = tidy_emm(contrast(e_tech, "pairwise", adjust = "none")),
    con_technique_revpairwise_tukey = tidy_emm(contrast(e_tech, "revpairwise", adjust = "tukey")),
    con_technique_trt_holm = tidy_emm(contrast(e_tech, "trt.vs.ctrl", adjust = "holm")),
    con_technique_by_post_tukey = tidy_emm(contrast(e_tp, "pairwise", adjust = "tukey")),
    emm_technique_proportional = tidy_emm(emmeans(m1, ~ technique, weights = "proportional")),
    emm_post_proportional = tidy_emm(emmeans(m1, ~ post, weights = "proportional")),
    emm_post_cells = tidy_emm(emmeans(m1, ~ post, weights = "cells")),
    con_post_proportional = tidy_emm(contrast(emmeans(m1, ~ post, weights = "proportional"),
                                              "revpairwise")),
    con_technique_custom = tidy_emm(contrast(e_tech, list(dp_vs_rest = c(1, -1/3, -1/3, -1/3)),
                                             adjust = "none")),
    con_interaction = tidy_emm(contrast(emmeans(m1, ~ post * technique, at = list(post = c(0, 1))),
                                        interaction = c("revpairwise", "pairwise"))),
    con_interaction_holm = tidy_emm(contrast(emmeans(m1, ~ post * technique,
                                                     at = list(post = c(0, 1))),
                                             interaction = c("revpairwise", "pairwise"),
                                             adjust = "holm")),
    icc_r2 = icc_r2(m1)
  )
  res$models$slope <- r1

  # Model 2: patients nested in therapists (a therapist intercept as well).
  m2 <- lmer(value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id),
             data = d, REML = TRUE)
  e2 <- emmeans(m2, ~ post | technique, at = list(post = c(0, 1)))
  res$models$therapist <- list(
    model = model_block(m2, d),
    emm_post_by_technique = tidy_emm(e2),
    con_post_by_technique = tidy_emm(contrast(e2, "revpairwise")),
    icc_r2 = icc_r2(m2)
  )

  # Model 3: random intercept only, the textbook ICC.
  m3 <- lmer(value ~ post + technique + session_number + (1 | patient_id), data = d, REML = TRUE)
  e3 <- emmeans(m3, ~ technique)
  res$models$intercept <- list(
    model = model_block(m3, d),
    emm_technique = tidy_emm(e3),
    con_technique_tukey = tidy_emm(contrast(e3, "pairwise", adjust = "tukey")),
    icc_r2 = icc_r2(m3)
  )

  out <- file.path("tests/reference", paste0("marginal_", name, ".json"))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), out)
  message("wrote ", out)
}

marginal_prepost("tests/reference/data/marginal_prepost.csv", "prepost")

# A snapshot of the shipped synthetic pain frame (make_marginal_data.py), with fit_prepost's
# formula: the numbers a user of mfr.fit_prepost(study, "pain_nrs") saw on that data.
synthetic_prepost <- function(path, name) {
  if (!file.exists(path)) {
    message("skipping ", path, " (not written yet)")
    return(invisible(NULL))
  }
  d <- read.csv(path, stringsAsFactors = FALSE)
  d$technique <- factor(d$technique, levels = TECH[TECH %in% unique(d$technique)])
  m <- lmer(value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id),
            data = d, REML = TRUE)
  e <- emmeans(m, ~ post | technique, at = list(post = c(0, 1)))
  et <- emmeans(m, ~ technique)
  res <- list(data = basename(path), versions = versions(),
              data_check = list(nrow = nrow(d), value_sum = sum(d$value),
                                post_sum = sum(d$post)),
              models = list(
    domain = list(
      model = model_block(m, d),
      emm_post_by_technique = tidy_emm(e),
      con_post_by_technique = tidy_emm(contrast(e, "revpairwise")),
      con_technique_tukey = tidy_emm(contrast(et, "pairwise", adjust = "tukey")),
      con_interaction = tidy_emm(contrast(emmeans(m, ~ post * technique, at = list(post = c(0, 1))),
                                          interaction = c("revpairwise", "pairwise"))),
      icc_r2 = icc_r2(m)
    )))
  out <- file.path("tests/reference", paste0("marginal_", name, ".json"))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), out)
  message("wrote ", out)
}

synthetic_prepost("tests/reference/data/marginal_synthetic.csv", "synthetic")
# The same model on a boundary (singular) case: performance returns NA for the ICC.
synthetic_prepost("tests/reference/data/marginal_singular.csv", "singular")
